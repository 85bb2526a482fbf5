"""The command line without an engine: parsing, reading, formatting, exits."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners import RunResult, cli
from runners.history import HostHistory

ROOT = Path(__file__).parents[2]
NO_ENGINE_LINE = "tarpipe: error: no Docker engine answers at unix://"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str
            ) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
              ) -> Iterator[None]:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    yield
    # docker-py leaves the socket of a failed connect open for the garbage
    # collector (docker/docker-py#3356, not merged): collect it here, where
    # the warning is expected, not in whichever test runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def kata_dir(tmp_path: Path) -> Path:
    kata = tmp_path / "kata1"
    (kata / "src" / "deep").mkdir(parents=True)
    (kata / "cyber-dojo.sh").write_text("make\n")
    (kata / "src" / "hiker.c").write_bytes(b"int x;\n")
    (kata / "src" / "deep" / "a b.h").write_bytes(b"\x00\xff")
    (kata / "empty").mkdir()
    return kata


def result(**changes: object) -> RunResult:
    fields: dict[str, object] = dict(
        stdout="out line\n", stderr="err line", stdout_truncated=False,
        stderr_truncated=False, status=0, timed_out=False, duration=1.25,
        created=("a.o", "my file.o"), deleted=(), changed=("hiker",))
    fields.update(changes)
    return RunResult(**fields)  # type: ignore[arg-type]


# ---- parsing -----------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "images", "katas", "history"])
def test_every_command_has_its_help(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    status, out, err = run_cli(capsys, command, "--help")
    assert status == 0
    assert out.startswith(f"usage: tarpipe {command}")
    assert err == ""


def test_run_help_names_the_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside a path
    _, out, _ = run_cli(capsys, "run", "--help")
    assert str(cli.default_katas_root()) in out
    assert cli.DEFAULT_VOLUME in out


def test_the_katas_root_default_follows_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert cli.default_katas_root() == tmp_path / "tarpipe" / "katas"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert cli.default_katas_root() == (
        Path.home() / ".local" / "share" / "tarpipe" / "katas")


@pytest.mark.parametrize(("argv", "says"), [
    ([], "COMMAND"),
    (["build"], "invalid choice"),
    (["run", "."], "--image"),
    (["run", ".", "--image", "i", "--runner", "cloud"], "invalid choice"),
    (["run", ".", "--image", "i", "--max-seconds", "soon"], "invalid float"),
    (["run", ".", "--image", "i", "--volume", "v"], "--volume is for"),
    (["run", ".", "--image", "i", "--runner", "katas-volume", "--volume",
      "v"], "--volume is for"),
    (["run", ".", "--image", "i", "--katas-root", "d"], "--katas-root is for"),
    (["katas"], "--volume"),
    (["katas", "--volume", "v", "--katas-root", "d"], "not allowed"),
    (["history", "--volume", "v"], "KATA_ID"),
    (["history", "../etc", "--katas-root", "d"], "plain identifier"),
])
def test_usage_errors_exit_2_and_say_what_is_wrong(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str,
    no_engine: None
) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.startswith("usage: tarpipe")
    assert says in err
    assert "Traceback" not in err


# ---- reading KATA_DIR ----------------------------------------------------


def test_the_visible_files_are_every_regular_file_recursively(
    kata_dir: Path
) -> None:
    assert cli.read_kata_dir(kata_dir) == {
        "cyber-dojo.sh": b"make\n",
        "src/hiker.c": b"int x;\n",
        "src/deep/a b.h": b"\x00\xff",
    }


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


@pytest.mark.parametrize(("make", "kind"), [
    (lambda path: path.symlink_to("../cyber-dojo.sh"), "a symbolic link"),
    (lambda path: path.symlink_to("/etc", target_is_directory=True),
     "a symbolic link"),
    (lambda path: path.symlink_to("missing"), "a symbolic link"),
    (_fifo, "a FIFO"),
    (_socket, "a socket"),
])
def test_anything_but_files_and_folders_is_refused_by_name(
    kata_dir: Path, make: object, kind: str
) -> None:
    assert callable(make)
    make(kata_dir / "src" / "odd")
    with pytest.raises(cli.UsageError) as caught:
        cli.read_kata_dir(kata_dir)
    assert "'src/odd'" in str(caught.value)
    assert kind in str(caught.value)


def test_a_name_that_is_not_utf8_is_refused(kata_dir: Path) -> None:
    with open(os.fsencode(kata_dir / "src") + b"/caf\xe9.c", "wb"):
        pass  # a Latin-1 name, as an old archive might have left
    with pytest.raises(cli.UsageError, match=r"'src/caf\\udce9\.c' in "
                                             "KATA_DIR is not a UTF-8 name"):
        cli.read_kata_dir(kata_dir)


def test_a_kata_dir_that_is_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(cli.UsageError, match="not a folder"):
        cli.read_kata_dir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(cli.UsageError, match="not a folder"):
        cli.read_kata_dir(tmp_path / "file")


def test_a_symlink_in_kata_dir_is_a_usage_error_before_any_engine(
    capsys: pytest.CaptureFixture[str], kata_dir: Path, no_engine: None
) -> None:
    (kata_dir / "link").symlink_to("cyber-dojo.sh")
    status, out, err = run_cli(capsys, "run", str(kata_dir), "--image", "i")
    assert status == 2
    assert out == ""
    assert err.splitlines()[-1] == (
        "tarpipe run: error: 'link' in KATA_DIR is a symbolic link: only "
        "regular files (and folders) can be visible files")


@pytest.mark.parametrize("runner", ["katas-volume", "katas-data-container"])
def test_a_katas_runner_needs_a_plain_kata_id(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_engine: None,
    runner: str
) -> None:
    kata = tmp_path / "my kata"
    kata.mkdir()
    (kata / "cyber-dojo.sh").write_text("true\n")
    status, _, err = run_cli(capsys, "run", str(kata), "--image", "i",
                             "--runner", runner)
    assert status == 2
    assert "'my kata' is not a plain identifier" in err
    assert "--kata-id" in err.splitlines()[-1]

    status, _, err = run_cli(capsys, "run", str(kata), "--image", "i",
                             "--runner", runner, "--kata-id", "a/b")
    assert status == 2
    assert "'a/b' is not a plain identifier" in err


def test_the_tmp_runner_takes_any_folder_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_engine: None
) -> None:
    kata = tmp_path / "my kata"
    kata.mkdir()
    (kata / "cyber-dojo.sh").write_text("true\n")
    status, _, err = run_cli(capsys, "run", str(kata), "--image", "i")
    # Past every usage check: only the missing engine stops it.
    assert status == 1
    assert err.startswith(NO_ENGINE_LINE)


# ---- no engine -----------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["images"],
    ["katas", "--volume", "v"],
    ["history", "k1", "--volume", "v", "--json"],
    ["run", str(ROOT / "examples" / "c-kata"), "--image", "i", "--json"],
])
def test_no_engine_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], no_engine: None, argv: list[str]
) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(NO_ENGINE_LINE)


def test_an_interrupt_exits_130_quietly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    kata_dir: Path
) -> None:
    def interrupted(path: object) -> dict[str, bytes]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "read_kata_dir", interrupted)
    status, out, err = run_cli(capsys, "run", str(kata_dir), "--image", "i")
    assert (status, out, err) == (130, "", "")


def test_an_unreadable_file_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    kata_dir: Path
) -> None:
    def unreadable(path: object) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    # As root, a chmod would not stop the read: make it fail instead.
    monkeypatch.setattr(Path, "read_bytes", unreadable)
    status, out, err = run_cli(capsys, "run", str(kata_dir), "--image", "i")
    assert status == 1
    assert out == ""
    assert err.startswith("tarpipe: error: [Errno 13] Permission denied")
    assert len(err.splitlines()) == 1


# ---- the result, both ways ------------------------------------------------


@pytest.mark.parametrize(("changes", "expected"), [
    ({"status": 0}, 0),
    ({"status": 3}, 3),
    ({"status": 255}, 255),
    ({"status": None, "timed_out": True}, 124),
    ({"status": 0, "timed_out": True}, 124),
    ({"status": None}, 1),
    ({"status": -1}, 1),
    ({"status": 256}, 1),
])
def test_the_exit_status_mirrors_the_run(
    changes: dict[str, object], expected: int
) -> None:
    assert cli.exit_status(result(**changes)) == expected


def test_json_is_one_object_of_every_result_field() -> None:
    run = result(stdout="é\n", stderr_truncated=True, rejected="too big")
    text = cli.result_json(run)
    assert text.endswith("\n")
    assert text.count("\n") == 1
    fields = json.loads(text)
    assert set(fields) == {field.name for field in dataclasses.fields(run)}
    for name, value in fields.items():
        expected = getattr(run, name)
        assert value == (list(expected) if isinstance(expected, tuple)
                         else expected)


def test_the_summary_shows_output_then_the_footer() -> None:
    text = cli.format_result(result())
    assert text == (
        "=== stdout ===\nout line\n"
        "=== stderr ===\nerr line\n"
        "=== result ===\n"
        "status:    0\n"
        "timed out: no\n"
        "duration:  1.250 s\n"
        "created:   a.o 'my file.o'\n"
        "deleted:   -\n"
        "changed:   hiker\n")


def test_the_summary_notes_time_outs_truncation_and_rejection() -> None:
    text = cli.format_result(result(
        stdout="", stderr="", status=None, timed_out=True,
        stdout_truncated=True, stderr_truncated=True, created=(),
        changed=(), rejected="'big' passes a limit"))
    assert "===" not in text.replace("=== result ===", "")
    assert "status:    none (killed)\n" in text
    assert "timed out: yes\n" in text
    assert "truncated: stdout and stderr (the rest was dropped)\n" in text
    assert text.endswith("rejected:  'big' passes a limit\n")


def test_the_summary_leaves_out_what_did_not_happen() -> None:
    text = cli.format_result(result())
    assert "truncated" not in text
    assert "rejected" not in text


def test_long_file_lists_wrap_under_their_label() -> None:
    names = tuple(f"step{n:02}.o" for n in range(40))
    lines = cli.format_result(result(created=names)).splitlines()
    created = [line for line in lines
               if line.startswith(("created:", " " * 11))]
    assert len(created) > 1
    assert all(len(line) <= 79 for line in created)
    assert " ".join(created).split()[1:] == list(names)


# ---- katas and history in a host folder, with no engine ---------------------


@pytest.fixture
def katas_root(tmp_path: Path) -> Path:
    root = tmp_path / "katas"
    history = HostHistory(root / "k1" / "history.git")
    history.commit({"cyber-dojo.sh": b"make\n"}, "exit status 2 in 1 s\n\nx",
                   commit_time=1_700_000_000)
    history.commit({"cyber-dojo.sh": b"make\n", "a.c": b""},
                   "exit status 0 in 1 s\n", commit_time=1_700_000_060)
    (root / "k2" / "sandbox").mkdir(parents=True)
    (root / "not a kata").mkdir()
    (root / "k3").write_text("a file, not a kata")
    return root


def test_katas_lists_each_kata_with_its_runs(
    capsys: pytest.CaptureFixture[str], katas_root: Path, no_engine: None
) -> None:
    status, out, err = run_cli(capsys, "katas", "--katas-root",
                               str(katas_root))
    assert (status, err) == (0, "")
    assert out == "k1  2 runs\nk2  0 runs\n"


def test_history_lists_the_commits_oldest_first(
    capsys: pytest.CaptureFixture[str], katas_root: Path, no_engine: None
) -> None:
    entries = HostHistory(katas_root / "k1" / "history.git").entries()
    status, out, _ = run_cli(capsys, "history", "k1", "--katas-root",
                             str(katas_root), "--json")
    assert status == 0
    commits = json.loads(out)["commits"]
    assert [c["commit_id"] for c in commits] == [e.commit_id for e in entries]
    assert [c["subject"] for c in commits] == [
        "exit status 2 in 1 s", "exit status 0 in 1 s"]
    assert [c["files"] for c in commits] == [
        ["cyber-dojo.sh"], ["a.c", "cyber-dojo.sh"]]

    status, out, _ = run_cli(capsys, "history", "k1", "--katas-root",
                             str(katas_root))
    assert status == 0
    assert out.splitlines() == [
        f"  1  {entries[0].commit_id[:12]}  2023-11-14 22:13:20 UTC  "
        "exit status 2 in 1 s",
        "     cyber-dojo.sh",
        f"  2  {entries[1].commit_id[:12]}  2023-11-14 22:14:20 UTC  "
        "exit status 0 in 1 s",
        "     a.c cyber-dojo.sh",
    ]


@pytest.mark.parametrize(("argv", "says"), [
    (["history", "k9"], "no kata 'k9' in folder"),
    (["history", "k2"], None),
    (["katas"], None),
])
def test_what_is_not_there_is_an_error_but_an_empty_kata_is_not(
    capsys: pytest.CaptureFixture[str], katas_root: Path, no_engine: None,
    argv: list[str], says: str | None
) -> None:
    status, out, err = run_cli(capsys, *argv, "--katas-root", str(katas_root))
    if says is None:
        assert (status, err) == (0, "")
    else:
        assert (status, out) == (1, "")
        assert err.startswith(f"tarpipe: error: {says}")


def test_a_missing_katas_folder_is_an_error_and_is_not_made(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, no_engine: None
) -> None:
    missing = tmp_path / "nowhere"
    status, out, err = run_cli(capsys, "katas", "--katas-root", str(missing))
    assert (status, out) == (1, "")
    assert err == f"tarpipe: error: no katas folder {str(missing)!r}\n"
    assert not missing.exists()


def test_reading_a_history_makes_no_repository(
    capsys: pytest.CaptureFixture[str], katas_root: Path, no_engine: None
) -> None:
    run_cli(capsys, "history", "k2", "--katas-root", str(katas_root))
    assert sorted(p.name for p in (katas_root / "k2").iterdir()) == ["sandbox"]


# ---- python -m tarpipe ----------------------------------------------------


def test_python_m_tarpipe_is_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tarpipe", "run", "--help"], cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: tarpipe run")

    done = subprocess.run(
        [sys.executable, "-m", "tarpipe"], cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2


def test_importing_tarpipe_loads_neither_runners_nor_docker() -> None:
    probe = ("import sys, tarpipe, tarpipe.__main__; "
             "print(sorted({m.partition('.')[0] for m in sys.modules} "
             "& {'runners', 'docker', 'requests'}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout == "[]\n"
