"""The `tarpipe` command line: run a kata folder, list images, katas, runs.

    tarpipe run KATA_DIR --image IMAGE [--runner RUNNER] [--json] ...
    tarpipe images
    tarpipe katas (--volume NAME | --katas-root DIR)
    tarpipe history KATA_ID (--volume NAME | --katas-root DIR) [--json]

The exit status of `run` mirrors the run: the script's own status when
it ran, 124 when it timed out (as timeout(1) does).  Every command exits
2 on a usage error, 1 on any other error (no engine, no image, a bad
request) after one line on stderr, `tarpipe: error: ...`, never a
traceback, and 130 on an interrupt, once the runner has cleaned up.

It lives here rather than in `tarpipe`, which must not need Docker;
`python -m tarpipe` hands over to `main`.  Like the runners, it starts
no host process: images are built by `.ci/images`, not from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import stat
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Protocol, TypeAlias

import docker
import docker.errors

from tarpipe.errors import TarPipeError

from ._base import RunResult, check_kata_id
from .errors import BadRequestError, EngineError, ImageNotFoundError
from .history import HistoryEntry, HostHistory
from .images import BUSYBOX, GCC, require_image
from .katas_data_container import KatasDataContainerRunner
from .katas_volume import KatasVolumeRunner
from .tmp import TmpRunner

__all__ = [
    "CommandError",
    "UsageError",
    "build_parser",
    "exit_status",
    "format_history",
    "format_result",
    "history_json",
    "main",
    "read_kata_dir",
    "result_json",
]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMED_OUT = 124  # what timeout(1) exits with
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
DEFAULT_VOLUME = "tarpipe-katas"
RUNNERS = ("tmp", "katas-volume", "katas-data-container")
# The layout KatasVolumeRunner documents: KATAS_ROOT/KATA_ID/history.git.
# Read here without a runner, so listing a host folder needs no engine.
HOST_HISTORY = "history.git"
WIDTH = 79


class UsageError(Exception):
    """The command line asks for something that cannot be: exit 2."""


class CommandError(Exception):
    """What the command names is not there (a folder, volume, kata)."""


# ---- the parser ---------------------------------------------------------


def default_katas_root() -> Path:
    """Where katas-volume keeps katas unless told: the user's data folder."""
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share"
    return Path(data) / "tarpipe" / "katas"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, each with its own --help."""
    parser = argparse.ArgumentParser(
        prog="tarpipe",
        description="Run a kata's cyber-dojo.sh in a throw-away Docker "
                    "container, and look at the images, katas and runs "
                    "kept here.")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_images(commands)
    _add_katas(commands)
    _add_history(commands)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_run(commands: Commands) -> None:
    run = commands.add_parser(
        "run", help="run a kata folder's cyber-dojo.sh",
        description="Run cyber-dojo.sh among the visible files, every "
                    "regular file under KATA_DIR, and print what it did. "
                    "Exits with the script's status, 124 if it timed out.")
    run.add_argument("kata_dir", metavar="KATA_DIR",
                     help="the visible files (no symlinks or special files)")
    run.add_argument("--image", required=True,
                     help=f"the image to run in, e.g. {GCC}")
    run.add_argument("--runner", choices=RUNNERS, default="tmp",
                     help="where the kata lives between runs (default: tmp, "
                          "nowhere)")
    run.add_argument("--max-seconds", type=float, default=10.0,
                     metavar="SECONDS",
                     help="time limit of the script (default: 10)")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object, every field of the result")
    run.add_argument("--katas-root", metavar="DIR",
                     help="katas-volume: the host folder of the katas "
                          f"(default: {default_katas_root()})")
    run.add_argument("--volume", metavar="NAME",
                     help="katas-data-container: the Docker volume of the "
                          f"katas (default: {DEFAULT_VOLUME})")
    run.add_argument("--kata-id", metavar="ID",
                     help="the kata's id (default: KATA_DIR's name)")
    run.set_defaults(handler=_run, command_parser=run)


def _add_images(commands: Commands) -> None:
    images = commands.add_parser(
        "images", help="list the project's images and whether each is built",
        description="List the images this project builds and whether each "
                    "is built here. Nothing can be pulled: `bash .ci/images`"
                    ", as root, builds them.")
    images.set_defaults(handler=_images, command_parser=images)


def _add_katas(commands: Commands) -> None:
    katas = commands.add_parser(
        "katas", help="list the katas kept in a volume or folder",
        description="List the katas kept in a Docker volume or a host "
                    "folder, each with its number of runs.")
    _add_store(katas)
    katas.set_defaults(handler=_katas, command_parser=katas)


def _add_history(commands: Commands) -> None:
    history = commands.add_parser(
        "history", help="list a kata's runs, oldest first",
        description="List a kata's runs, oldest first: commit id, "
                    "outcome and the visible files of each.")
    history.add_argument("kata_id", metavar="KATA_ID")
    _add_store(history)
    history.add_argument("--json", action="store_true",
                         help="print one JSON object")
    history.set_defaults(handler=_history, command_parser=history)


def _add_store(parser: argparse.ArgumentParser) -> None:
    store = parser.add_mutually_exclusive_group(required=True)
    store.add_argument("--volume", metavar="NAME",
                       help="katas of the katas-data-container runner")
    store.add_argument("--katas-root", metavar="DIR",
                       help="katas of the katas-volume runner")


# ---- main -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or argparse's own usage error
        return _code(done)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as error:
        args.command_parser.print_usage(sys.stderr)
        print(f"{args.command_parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # The runner's context managers have removed its container.
        return EXIT_INTERRUPTED
    # OSError covers requests' errors too, which docker-py lets through.
    except (TarPipeError, CommandError, docker.errors.DockerException,
            OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"tarpipe: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def _code(done: SystemExit) -> int:
    if done.code is None:
        return 0
    return done.code if isinstance(done.code, int) else EXIT_ERROR


@contextmanager
def _engine() -> Iterator[docker.DockerClient]:
    """A client of the engine DOCKER_HOST names; EngineError if none."""
    try:
        client = docker.from_env()
    except docker.errors.DockerException as error:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise EngineError(
            f"no Docker engine answers at {where}: {error}") from error
    with closing(client):
        yield client


# ---- run ------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    _check_run_options(args)
    kata_id = _kata_id_of(args)
    files = read_kata_dir(args.kata_dir)
    with _engine() as client:
        runner = _runner_of(args, client)
        with closing(runner):
            result = runner.run(kata_id, args.image, files,
                                max_seconds=args.max_seconds)
    print(result_json(result) if args.json else format_result(result),
          end="")
    return exit_status(result)


def _check_run_options(args: argparse.Namespace) -> None:
    if args.katas_root is not None and args.runner != "katas-volume":
        raise UsageError("--katas-root is for --runner katas-volume")
    if args.volume is not None and args.runner != "katas-data-container":
        raise UsageError("--volume is for --runner katas-data-container")


def _kata_id_of(args: argparse.Namespace) -> str:
    """--kata-id, else KATA_DIR's name; tmp keeps nothing, so any id does."""
    name = Path(os.path.abspath(args.kata_dir)).name
    kata_id: str = args.kata_id or name
    try:
        check_kata_id(kata_id)
    except BadRequestError as error:
        if args.runner == "tmp" and args.kata_id is None:
            return "kata"
        hint = "" if args.kata_id else "; name the kata with --kata-id ID"
        raise UsageError(f"{error}{hint}") from None
    return kata_id


AnyRunner: TypeAlias = TmpRunner | KatasVolumeRunner | KatasDataContainerRunner


def _runner_of(args: argparse.Namespace,
               client: docker.DockerClient) -> AnyRunner:
    if args.runner == "katas-volume":
        root = Path(args.katas_root or default_katas_root()).expanduser()
        return KatasVolumeRunner(root, client)
    if args.runner == "katas-data-container":
        return KatasDataContainerRunner(args.volume or DEFAULT_VOLUME, client)
    return TmpRunner(client)


def read_kata_dir(kata_dir: str | os.PathLike[str]) -> dict[str, bytes]:
    """The visible files: every regular file under `kata_dir`, recursively.

    Keys are paths relative to `kata_dir`, with `/` between folders.
    Nothing is skipped silently: a symlink, FIFO, socket or device in
    the folder raises UsageError naming it, as does a name that is not
    UTF-8; a `kata_dir` that is not a folder raises UsageError too.
    """
    top = Path(kata_dir)
    if not top.is_dir():
        raise UsageError(f"KATA_DIR {str(top)!r} is not a folder")
    files: dict[str, bytes] = {}
    _read_folder(top, "", files)
    return files


def _read_folder(folder: Path, prefix: str, files: dict[str, bytes]) -> None:
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda entry: entry.name):
            name = prefix + entry.name
            _check_utf8(name)
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                _read_folder(Path(entry.path), name + "/", files)
            elif stat.S_ISREG(mode):
                files[name] = Path(entry.path).read_bytes()
            else:
                raise UsageError(
                    f"{name!r} in KATA_DIR is {_kind_of(mode)}: only "
                    "regular files (and folders) can be visible files")


def _check_utf8(name: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"{name!r} in KATA_DIR is not a UTF-8 name") from None


def _kind_of(mode: int) -> str:
    kinds = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device")]
    return next((kind for test, kind in kinds if test(mode)),
                "not a regular file")


def exit_status(result: RunResult) -> int:
    """The exit status mirroring a run: 124 timed out, else its status.

    A status the shell could not pass on (none, or outside 0..255) is 1.
    """
    if result.timed_out:
        return EXIT_TIMED_OUT
    if result.status is None or not 0 <= result.status <= 255:
        return EXIT_ERROR
    return result.status


def result_json(result: RunResult) -> str:
    """One line of JSON: every field of `result`, tuples as lists."""
    return json.dumps(dataclasses.asdict(result)) + "\n"


def format_result(result: RunResult) -> str:
    """The run for a person: its stdout, its stderr, then a footer."""
    parts = [_section(title, text) for title, text in
             (("stdout", result.stdout), ("stderr", result.stderr)) if text]
    parts.append(_section("result", _footer(result)))
    return "".join(parts)


def _section(title: str, text: str) -> str:
    ending = "" if text.endswith("\n") else "\n"
    return f"=== {title} ===\n{text}{ending}"


def _footer(result: RunResult) -> str:
    status = "none (killed)" if result.status is None else str(result.status)
    lines = [("status", status),
             ("timed out", "yes" if result.timed_out else "no"),
             ("duration", f"{result.duration:.3f} s")]
    truncated = [name for name, cut in (("stdout", result.stdout_truncated),
                                        ("stderr", result.stderr_truncated))
                 if cut]
    if truncated:
        lines.append(("truncated", " and ".join(truncated)
                      + " (the rest was dropped)"))
    for name in ("created", "deleted", "changed"):
        lines.append((name, _names(getattr(result, name))))
    if result.rejected:
        lines.append(("rejected", result.rejected))
    return "".join(_field(label, value) for label, value in lines)


def _names(names: tuple[str, ...]) -> str:
    if not names:
        return "-"
    return " ".join(shlex.quote(name) for name in names)


def _field(label: str, value: str) -> str:
    head = f"{label + ':':<11}"
    return textwrap.fill(value, WIDTH, initial_indent=head,
                         subsequent_indent=" " * len(head),
                         break_long_words=False, break_on_hyphens=False) + "\n"


# ---- images ---------------------------------------------------------------


def _images(args: argparse.Namespace) -> int:
    with _engine() as client:
        for image in (BUSYBOX, GCC):
            built = _is_built(client, image)
            print(f"{image:<20} {'built' if built else 'missing'}")
    print("Nothing can be pulled. To build them, run `bash .ci/images` in a")
    print("checkout of tarpipe, as root (debootstrap needs root); an image")
    print("already built is not built again.")
    return 0


def _is_built(client: docker.DockerClient, image: str) -> bool:
    try:
        require_image(client, image)
    except ImageNotFoundError:
        return False
    return True


# ---- katas and history ------------------------------------------------------


class _Katas(Protocol):
    where: str

    def kata_ids(self) -> list[str]: ...

    def history(self, kata_id: str) -> list[HistoryEntry]: ...


class _HostKatas:
    """The katas of a katas-volume root, read with no engine."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise CommandError(f"no katas folder {str(root)!r}")
        self.root = root
        self.where = f"folder {str(root)!r}"

    def kata_ids(self) -> list[str]:
        return sorted(path.name for path in self.root.iterdir()
                      if _is_kata_id(path.name) and path.is_dir()
                      and not path.is_symlink())

    def history(self, kata_id: str) -> list[HistoryEntry]:
        path = self.root / kata_id / HOST_HISTORY
        # HostHistory makes a repository where there is none: look first.
        return HostHistory(path).entries() if (path / "HEAD").exists() else []


class _VolumeKatas:
    """The katas of a katas-data-container volume."""

    def __init__(self, runner: KatasDataContainerRunner) -> None:
        self.where = f"volume {runner.volume!r}"
        self.kata_ids = runner.kata_ids
        self.history = runner.history


@contextmanager
def _katas_of(args: argparse.Namespace) -> Iterator[_Katas]:
    if args.katas_root is not None:
        yield _HostKatas(Path(args.katas_root).expanduser())
        return
    with _engine() as client:
        _require_volume(client, args.volume)
        with KatasDataContainerRunner(args.volume, client) as runner:
            yield _VolumeKatas(runner)


def _require_volume(client: docker.DockerClient, name: str) -> None:
    """Listing must not create a volume, as a first run would."""
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        raise CommandError(f"no Docker volume {name!r}") from None


def _is_kata_id(name: str) -> bool:
    try:
        check_kata_id(name)
    except BadRequestError:
        return False
    return True


def _katas(args: argparse.Namespace) -> int:
    with _katas_of(args) as katas:
        runs = [(kata_id, len(katas.history(kata_id)))
                for kata_id in katas.kata_ids()]
    width = max((len(kata_id) for kata_id, _ in runs), default=0)
    for kata_id, count in runs:
        print(f"{kata_id:<{width}}  {count} run{'' if count == 1 else 's'}")
    return 0


def _history(args: argparse.Namespace) -> int:
    if not _is_kata_id(args.kata_id):
        raise UsageError(f"KATA_ID {args.kata_id!r} is not a plain identifier")
    with _katas_of(args) as katas:
        entries = katas.history(args.kata_id)
        if not entries and args.kata_id not in katas.kata_ids():
            raise CommandError(f"no kata {args.kata_id!r} in {katas.where}")
    print(history_json(args.kata_id, entries) if args.json
          else format_history(entries), end="")
    return 0


def _subject(entry: HistoryEntry) -> str:
    return entry.message.partition("\n")[0]


def format_history(entries: list[HistoryEntry]) -> str:
    """The runs for a person: number, commit, time, subject, then files."""
    lines = []
    for number, entry in enumerate(entries, 1):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                             time.gmtime(entry.commit_time))
        lines.append(f"{number:>3}  {entry.commit_id[:12]}  {when}  "
                     f"{_subject(entry)}\n")
        lines.append(textwrap.fill(
            _names(tuple(sorted(entry.files))), WIDTH, initial_indent=" " * 5,
            subsequent_indent=" " * 5, break_long_words=False,
            break_on_hyphens=False) + "\n")
    return "".join(lines)


def history_json(kata_id: str, entries: list[HistoryEntry]) -> str:
    """One line of JSON: the kata's id and its commits, oldest first."""
    commits = [{"commit_id": entry.commit_id, "subject": _subject(entry),
                "message": entry.message, "commit_time": entry.commit_time,
                "files": sorted(entry.files)} for entry in entries]
    return json.dumps({"kata_id": kata_id, "commits": commits}) + "\n"
