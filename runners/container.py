"""The container layer: a throw-away sandbox container, bytes in and out.

A `Sandbox` is one container, locked down (no network, read-only root,
no capabilities, limits on memory, processes and files) whose main
process only sleeps, so that `exec` can run commands in it:

- `put` pipes a tar stream into `tar -x` through the exec's stdin;
- `get` reads a tar stream from `tar -c` on the exec's stdout;
- `run` runs a command with a time limit and caps on its output.

Everything goes through the Docker SDK; no process is started on the
host. The exec streams are read straight from the hijacked HTTP socket,
whose output the engine multiplexes into frames (an 8-byte header: the
stream, 3 zero bytes, the payload's length big-endian). A chain of tiny
generators below takes them apart without holding more than one piece.

With GNU tar in the image, mtimes cross in both directions to the
nanosecond (PAX records). Images without it (busybox) fall back, see
`Sandbox.put` and `Sandbox.get`.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, cast

import docker
import docker.errors
import docker.types
import requests
from docker.models.containers import Container

from .errors import ContainerError, EngineError, ImageNotFoundError
from .seccomp import SYSCALL_PROFILES, security_options

__all__ = [
    "MANAGED_LABEL",
    "PID_LABEL",
    "ROLE_LABEL",
    "SANDBOX",
    "ContainerLimits",
    "ExecResult",
    "Sandbox",
    "create_container",
    "exec_in",
    "exec_out",
    "leftover_containers",
    "remove_container",
    "remove_leftovers",
    "untar_command",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: every container made here carries it, so leftovers can be found
MANAGED_LABEL = "org.tarpipe.managed"
#: what the container is for ("sandbox", "data", ...)
ROLE_LABEL = "org.tarpipe.role"
#: the id of the process that made it: its own leftovers, among others'
PID_LABEL = "org.tarpipe.pid"
#: where the files of a run live inside the container
SANDBOX = "/sandbox"
NOBODY_USER = "65534:65534"

# 2**31 - 1 s (68 years): a plain number of seconds, which any `sleep`
# takes, where `infinity` is an extension (of coreutils and busybox).
_KEEP_ALIVE = ["sleep", "2147483647"]
_FRAME_HEADER = struct.Struct(">BxxxL")
_STDERR = 2  # the stream byte of a frame: 1 is stdout
_CHUNK = 64 * 1024
# How much of the stderr of exec_in and exec_out an error carries, and
# what an exec may send back while its stdin is still being written.
_STDERR_CAP = 64 * 1024
_PENDING_CAP = 1 * MiB
_REMOVE_ATTEMPTS: Final = 5

# Members are named as pack_dir names them (`a`, `d/b`): no `./` prefix,
# no member for the folder itself; sorted, so equal trees give equal
# streams. atime and ctime records would only add noise to every member.
_TAR_CREATE_SCRIPT = (
    'cd -- "$1" && '
    "find . -mindepth 1 -maxdepth 1 -printf '%P\\0' | LC_ALL=C sort -z | "
    "tar -c -f - --format=posix --pax-option=delete=atime,delete=ctime "
    "--sort=name --null --verbatim-files-from -T -"
)
# busybox tar has no -T: the top-level names are gathered by the shell
# (hidden ones too), which keeps any name intact. It refuses to write an
# empty archive, so an empty folder gets the end-of-archive blocks alone.
_BUSYBOX_TAR_CREATE_SCRIPT = (
    'cd -- "$1" && shift && '
    "for f in * .[!.]* ..?*; do "
    'if [ -e "$f" ] || [ -L "$f" ]; then set -- "$@" "$f"; fi; done; '
    'if [ $# -eq 0 ]; then exec head -c 1024 /dev/zero; fi; '
    'exec tar -c -f - -- "$@"'
)


@dataclass(frozen=True)
class ContainerLimits:
    """What one sandbox container may use.

    The defaults let a kata compile and run its tests (gcc at -O2 on a few
    files needs about 100 MiB) and stop one that misbehaves on purpose.
    The tmpfs sizes count against `memory_bytes` as they fill: files in a
    tmpfs are memory.
    """

    #: memory, with no swap on top (memory+swap is set to the same)
    memory_bytes: int = 768 * MiB
    #: processes and threads in the container: the fork-bomb stop
    pids: int = 256
    #: CPU time as a number of cores, so a busy loop leaves the host some
    cpus: float = 1.0
    #: ulimit nofile, per process
    nofile: int = 1024
    #: ulimit nproc. The kernel counts it per uid across the whole host,
    #: and every sandbox runs as nobody, so all the sandboxes running at
    #: once share it: set low, one kata's fork bomb would stop the others
    #: from forking. It is only a backstop; `pids` is the real limit.
    nproc: int = 8192
    #: ulimit fsize: the largest file a process may write
    file_bytes: int = 64 * MiB
    #: size of the /sandbox tmpfs (not used when /sandbox is mounted)
    sandbox_bytes: int = 512 * MiB
    #: size of the /tmp tmpfs
    tmp_bytes: int = 64 * MiB
    #: size of /dev/shm, which every container has, private to it
    shm_bytes: int = 16 * MiB
    #: the system calls allowed: "tarpipe", our seccomp profile (x86_64
    #: calls only, no io_uring: see `runners.seccomp`), or "engine", the
    #: engine's default profile, for a kata that runs 32-bit binaries
    syscalls: str = "tarpipe"

    def __post_init__(self) -> None:
        if self.syscalls not in SYSCALL_PROFILES:
            raise ValueError(f"ContainerLimits.syscalls must be one of "
                             f"{', '.join(SYSCALL_PROFILES)}, not "
                             f"{self.syscalls!r}")
        for name, value in vars(self).items():
            if name == "syscalls":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or value <= 0:
                raise ValueError(f"ContainerLimits.{name} must be a positive "
                                 f"number, not {value!r}")

    def ulimits(self) -> list[docker.types.Ulimit]:
        """The ulimits for the engine; core dumps are always off."""
        values = {"nofile": self.nofile, "nproc": self.nproc,
                  "fsize": self.file_bytes, "core": 0}
        return [docker.types.Ulimit(name=name, soft=value, hard=value)
                for name, value in values.items()]


@dataclass(frozen=True)
class ExecResult:
    """What one command did: its capped output, status and duration.

    `status` is None when the command timed out (the container was
    killed). `duration` is wall-clock seconds from asking the engine to
    start the command until its output ended or it was killed.
    """

    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    status: int | None
    timed_out: bool
    duration: float


class Sandbox:
    """A locked-down container to put files in, run commands, get files out.

    Use it as a context manager: the container is created and started on
    entry and removed on exit, whether the block ended normally, with an
    exception, or with KeyboardInterrupt. It runs as `user` ("uid:gid",
    nobody by default) with no network, a read-only root file system and
    no capabilities (`cap_add` gives some back, e.g. for a root data
    container). /sandbox and /tmp are tmpfs owned by `user`, unless
    `sandbox_dir` (a host folder) or `sandbox_volume` (a Docker volume)
    is mounted at /sandbox instead.

    Raises `ImageNotFoundError` for an image that is not built here,
    `EngineError` when the engine cannot be reached, and `ContainerError`
    when a container step fails.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        *,
        limits: ContainerLimits = ContainerLimits(),
        user: str = NOBODY_USER,
        cap_add: Iterable[str] = (),
        sandbox_dir: str | None = None,
        sandbox_volume: str | None = None,
        role: str = "sandbox",
        io_timeout: float = 60.0,
    ) -> None:
        if sandbox_dir is not None and sandbox_volume is not None:
            raise ValueError("give sandbox_dir or sandbox_volume, not both")
        self.client = client
        self.image = image
        self.limits = limits
        self.user = user
        self.uid, self.gid = _ids_of(user)
        self.cap_add = list(cap_add)
        self.sandbox_mount = sandbox_dir or sandbox_volume
        self.role = role
        #: seconds put and get wait for the next byte before giving up
        self.io_timeout = io_timeout
        self.killed = False
        self._container: Container | None = None
        self._gnu_tar: bool | None = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.remove()

    @property
    def container(self) -> Container:
        """The running container; ContainerError before start or after kill."""
        if self._container is None:
            raise ContainerError("the sandbox container is not started")
        if self.killed:
            raise ContainerError(
                f"container {self._container.short_id} was killed")
        return self._container

    @property
    def id(self) -> str:
        """The running container's id."""
        return cast(str, self.container.id)

    def start(self) -> None:
        """Create and start the container; remove it if starting fails."""
        self._container = create_container(self.client, self.image,
                                           _KEEP_ALIVE, self._create_options())
        try:
            with _engine(f"start container {self._container.short_id}"):
                self._container.start()
        except BaseException:
            log.warning("container %s did not start; removing it",
                        self._container.short_id)
            self.remove()
            raise
        log.debug("started container %s from %s",
                  self._container.short_id, self.image)

    def kill(self) -> None:
        """Kill every process of the container at once (SIGKILL)."""
        if self._container is None or self.killed:
            return
        self.killed = True
        try:
            self._container.kill()
        except docker.errors.APIError as error:
            # Already stopped, or already being removed: dead either way.
            log.warning("killing container %s: %s",
                        self._container.short_id, error)

    def remove(self) -> None:
        """Remove the container, running or not; a second call does nothing."""
        container, self._container = self._container, None
        if container is None:
            return
        remove_container(self.client, cast(str, container.id))

    @property
    def gnu_tar(self) -> bool:
        """Whether the image's `tar` is GNU tar; asked once per Sandbox."""
        if self._gnu_tar is None:
            probe = self.run(["tar", "--version"], max_seconds=self.io_timeout)
            self._gnu_tar = b"GNU tar" in probe.stdout
            log.debug("container %s: GNU tar %s", self.container.short_id,
                      "found" if self._gnu_tar else "missing")
        return self._gnu_tar

    def put(self, chunks: Iterable[bytes], path: str = SANDBOX) -> None:
        """Unpack the tar stream `chunks` into folder `path`, streaming.

        With GNU tar, mtimes are restored to the nanosecond from PAX
        records, and modes exactly (`-p`). With busybox tar, PAX mtime
        records are ignored: each file gets the whole seconds of its ustar
        header (a negative mtime, not representable there, becomes 0).
        Files belong to the container's user; as root, to the owner in
        each header. Raises ContainerError, with tar's stderr, when tar
        fails.
        """
        exec_in(self.client, self.id, self._untar_command(path),
                chunks, io_timeout=self.io_timeout)

    def get(self, path: str = SANDBOX) -> Iterator[bytes]:
        """The files under folder `path` as a tar stream, chunk by chunk.

        Members are named relative to `path` (`a`, `d/b`), with no member
        for `path` itself. The command starts when the first chunk is
        asked for; its failure is raised as ContainerError (with tar's
        stderr) after the last chunk. Closing the iterator early closes
        the exec's socket.

        With GNU tar the stream is PAX (`--format=posix`) with nanosecond
        mtimes, sorted by name. Without it, busybox `tar -c` writes ustar
        headers: mtimes in whole seconds (truncated), folders in the order
        they list. The engine's archive endpoint is no way out: it cannot
        see into a tmpfs (it shows the image's empty /sandbox folder), and
        would truncate mtimes to whole seconds anyway.
        """
        script = (_TAR_CREATE_SCRIPT if self.gnu_tar
                  else _BUSYBOX_TAR_CREATE_SCRIPT)
        return exec_out(self.client, self.id,
                        ["sh", "-c", script, "sh", path],
                        io_timeout=self.io_timeout)

    def run(
        self,
        command: list[str] | str,
        *,
        max_seconds: float,
        workdir: str = SANDBOX,
        stdout_cap: int = 50 * 1024,
        stderr_cap: int = 50 * 1024,
    ) -> ExecResult:
        """Run `command` (argv, or a string for `sh -c`) for `max_seconds`.

        Output past a cap is read and dropped, so the command never blocks
        on a full pipe, and memory stays bounded by the caps. When
        `max_seconds` pass before the output ends, the whole container is
        killed (an exec alone cannot be killed through the engine, and its
        children would live on) and the result says `timed_out`; the
        Sandbox is then unusable.
        """
        argv = ["sh", "-c", command] if isinstance(command, str) else command
        started = time.monotonic()
        deadline = started + max_seconds
        stdout, stderr = _Capped(stdout_cap), _Capped(stderr_cap)
        exec_id, conn = _start_exec(self.client, self.id, argv,
                                    workdir=workdir)
        status: int | None = None
        try:
            with conn:
                for stream, piece in _frames(conn.reader_until(deadline)):
                    (stderr if stream == _STDERR else stdout).add(piece)
            status = _exit_status(self.client, exec_id, deadline)
        except _DeadlinePassed:
            pass
        if status is None:
            log.debug("%r passed %.1f s: killing container %s", argv,
                      max_seconds, self.container.short_id)
            self.kill()
        return ExecResult(
            bytes(stdout.data), bytes(stderr.data), stdout.truncated,
            stderr.truncated, status, status is None,
            time.monotonic() - started)

    def _create_options(self) -> dict[str, Any]:
        limits = self.limits
        tmpfs = {"/tmp": _tmpfs(self.uid, self.gid, 0o1777, limits.tmp_bytes)}
        volumes = None
        if self.sandbox_mount is None:
            tmpfs[SANDBOX] = _tmpfs(self.uid, self.gid, 0o755,
                                    limits.sandbox_bytes)
        else:
            volumes = {self.sandbox_mount: {"bind": SANDBOX, "mode": "rw"}}
        return {
            "user": self.user,
            # No network at all: not even an endpoint on the engine's
            # "none" network. The container still gets a network
            # namespace of its own, with only `lo`; the engine skips its
            # network bookkeeping, which halves the cost of a container
            # here (14 against 7.5 created, started and removed a
            # second) and keeps clear of a lock-order deadlock in the
            # 20.10 engine's endpoint bookkeeping (moby/moby#46661).
            "network_disabled": True,
            "network_mode": "none",
            "read_only": True,
            "tmpfs": tmpfs,
            "volumes": volumes,
            "working_dir": SANDBOX,
            "mem_limit": limits.memory_bytes,
            "memswap_limit": limits.memory_bytes,
            "pids_limit": limits.pids,
            "nano_cpus": round(limits.cpus * 1e9),
            "shm_size": limits.shm_bytes,
            "ulimits": limits.ulimits(),
            "security_opt": security_options(
                self.client, own_profile=limits.syscalls == "tarpipe"),
            "cap_drop": ["ALL"],
            "cap_add": self.cap_add or None,
            "init": True,
            "labels": {MANAGED_LABEL: "1", ROLE_LABEL: self.role,
                       PID_LABEL: str(os.getpid())},
        }

    def _untar_command(self, path: str) -> list[str]:
        return untar_command(path, gnu_tar=self.gnu_tar,
                             as_root=self.uid == 0)


def untar_command(path: str, *, gnu_tar: bool, as_root: bool) -> list[str]:
    """The argv of a `tar -x` that unpacks its stdin into folder `path`.

    Modes and mtimes are restored (to the nanosecond with GNU tar); owners
    only `as_root`, otherwise files belong to the user running it.
    """
    if not gnu_tar:
        # busybox tar restores modes and mtimes unless told not to,
        # and owners too unless -o.
        owner = "--numeric-owner" if as_root else "-o"
        return ["tar", "-x", "-f", "-", owner, "-C", path]
    owners = (["--same-owner", "--numeric-owner"] if as_root
              else ["--no-same-owner"])
    # no-timestamp: mtimes before 1970 or in the future are wanted.
    return ["tar", "-x", "-f", "-", "-p", "--warning=no-timestamp",
            *owners, "-C", path]


# The keywords of `containers.create` that go in the container's own
# config; the others are its host config's (`create_host_config`).
_CONFIG_KEYWORDS: Final = frozenset({
    "environment", "labels", "name", "network_disabled", "stdin_open",
    "tty", "user", "working_dir"})


def create_container(client: docker.DockerClient, image: str,
                     command: list[str], options: dict[str, Any]) -> Container:
    """Create a container of `image` from `containers.create` keywords.

    One request: `containers.create` inspects the container it made
    (a second one), where the id is all a throw-away container needs.
    The model returned knows only that id. Host folders are bound with
    `volumes`, as there. Raises ImageNotFoundError, ContainerError or
    EngineError.
    """
    config = {key: value for key, value in options.items()
              if key in _CONFIG_KEYWORDS}
    host = {key: value for key, value in options.items()
            if key not in _CONFIG_KEYWORDS}
    host["binds"] = host.pop("volumes", None)
    with _engine(f"create a container from {image!r}"):
        try:
            made = client.api.create_container(
                image, command,
                host_config=client.api.create_host_config(**host), **config)
        except docker.errors.ImageNotFound:
            raise ImageNotFoundError(image) from None
    return client.containers.prepare_model({"Id": made["Id"]})


def remove_container(client: docker.DockerClient,
                     container_id: str) -> None:
    """Remove a container, running or not; gone already is fine."""
    for attempt in range(1, _REMOVE_ATTEMPTS + 1):
        try:
            with _unreachable_engine(f"remove container {container_id[:12]}"):
                client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            explanation = str(error.explanation or error)
            conflict = error.status_code == 409
            if conflict and "already in progress" in explanation:
                pass  # another remover is on it
            elif conflict and attempt < _REMOVE_ATTEMPTS:
                # A container that stops by itself (a warm one, once its
                # run is over) while the engine force-removes it makes
                # the engine fail to kill it and refuse (409): again.
                log.debug("removing container %s again: %s",
                          container_id[:12], explanation)
                time.sleep(0.05 * attempt)
                continue
            else:
                raise ContainerError(f"cannot remove container "
                                     f"{container_id[:12]}: {explanation}"
                                     ) from error
        log.debug("removed container %s", container_id[:12])
        return


def exec_in(
    client: docker.DockerClient,
    container_id: str,
    argv: list[str],
    chunks: Iterable[bytes],
    *,
    io_timeout: float = 60.0,
) -> None:
    """Run `argv` in a running container with `chunks` as its stdin.

    The chunks are sent as they come, never joined. Raises ContainerError,
    with the command's stderr, when it ends with a non-zero status or
    takes no input for `io_timeout` seconds. Its stdout is dropped.
    """
    exec_id, conn = _start_exec(client, container_id, argv, stdin=True)
    stderr = _Capped(_STDERR_CAP)
    with conn:
        _send_all(conn, chunks, io_timeout)
        conn.shutdown_write()
        for _ in _stdout_of(_frames(conn.idle_reader(io_timeout)), stderr):
            pass
    _check_status(client, exec_id, argv, stderr, io_timeout)


def exec_out(
    client: docker.DockerClient,
    container_id: str,
    argv: list[str],
    *,
    io_timeout: float = 60.0,
) -> Iterator[bytes]:
    """The stdout of `argv`, run in a running container, chunk by chunk.

    The command starts when the first chunk is asked for. After the last
    chunk, a non-zero status raises ContainerError with its stderr; so
    does waiting `io_timeout` seconds for a byte. Closing the iterator
    early closes the exec's socket (the command then gets SIGPIPE).
    """
    exec_id, conn = _start_exec(client, container_id, argv)
    stderr = _Capped(_STDERR_CAP)
    with conn:
        yield from _stdout_of(_frames(conn.idle_reader(io_timeout)), stderr)
    _check_status(client, exec_id, argv, stderr, io_timeout)


def leftover_containers(
    client: docker.DockerClient, *, pid: int | None = None
) -> list[Container]:
    """Every container made by a Sandbox and still there, running or not.

    With `pid`, only those made by that process.
    """
    labels = [f"{MANAGED_LABEL}=1"]
    if pid is not None:
        labels.append(f"{PID_LABEL}={pid}")
    with _engine("list containers"):
        # ignore_removed: a container removed between the listing and
        # its inspection (a pool clearing up meanwhile) is no error.
        return client.containers.list(all=True, filters={"label": labels},
                                      ignore_removed=True)


def remove_leftovers(
    client: docker.DockerClient, *, pid: int | None = None
) -> int:
    """Remove the leftover containers (of process `pid`); how many there were.

    Without `pid` this removes the containers of every process, those of
    runs still going on included: call it when no other runner is running.
    """
    leftovers = leftover_containers(client, pid=pid)
    for container in leftovers:
        log.warning("removing leftover container %s (%s)",
                    container.short_id, container.labels.get(ROLE_LABEL))
        with (_engine(f"remove container {container.short_id}"),
              suppress(docker.errors.NotFound)):
            container.remove(force=True, v=True)
    return len(leftovers)


def _ids_of(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        raise ValueError(f"user must be numeric 'uid' or 'uid:gid', "
                         f"not {user!r}")
    return int(uid), int(gid or uid)


def _tmpfs(uid: int, gid: int, mode: int, size: int) -> str:
    # Docker mounts a tmpfs noexec by default; a kata runs what it builds.
    return f"uid={uid},gid={gid},mode={mode:o},exec,size={size}"


@contextmanager
def _engine(what: str) -> Iterator[None]:
    """Engine failures as runners errors, saying what was being done."""
    try:
        yield
    except docker.errors.APIError as error:
        raise ContainerError(
            f"cannot {what}: {error.explanation or error}") from error
    except (docker.errors.DockerException,
            requests.exceptions.RequestException) as error:
        raise _no_engine(what, error) from error


@contextmanager
def _unreachable_engine(what: str) -> Iterator[None]:
    """An engine that cannot be reached as EngineError; the rest as is."""
    try:
        yield
    except docker.errors.APIError:
        raise
    except (docker.errors.DockerException,
            requests.exceptions.RequestException) as error:
        raise _no_engine(what, error) from error


def _no_engine(what: str, error: Exception) -> EngineError:
    return EngineError(f"cannot {what}: the Docker engine did not answer "
                       f"({error})")


def _start_exec(
    client: docker.DockerClient,
    container_id: str,
    argv: list[str],
    *,
    stdin: bool = False,
    workdir: str | None = None,
) -> tuple[str, _ExecSocket]:
    with _engine(f"exec {argv[0]!r} in container {container_id[:12]}"):
        exec_id = client.api.exec_create(
            container_id, argv, stdin=stdin, workdir=workdir)["Id"]
        raw = client.api.exec_start(exec_id, socket=True)
    log.debug("exec %s in %s: %r", exec_id[:12], container_id[:12], argv)
    return exec_id, _ExecSocket(raw)


def _exit_status(client: docker.DockerClient, exec_id: str,
                 deadline: float) -> int | None:
    """The exec's exit code, or None if it still runs at `deadline`."""
    # The output can end a moment before the engine records the exit.
    while True:
        with _engine(f"inspect exec {exec_id[:12]}"):
            state = client.api.exec_inspect(exec_id)
        if not state["Running"]:
            return cast(int, state["ExitCode"])
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _check_status(client: docker.DockerClient, exec_id: str,
                  argv: list[str], stderr: _Capped, io_timeout: float) -> None:
    status = _exit_status(client, exec_id, time.monotonic() + io_timeout)
    if status != 0:
        what = "still running" if status is None else f"status {status}"
        raise ContainerError(f"{shlex.join(argv)[:200]} ended with {what}",
                             bytes(stderr.data), status=status)


# ---- the exec's hijacked socket ---------------------------------------

Read = Callable[[int], bytes]


class _DeadlinePassed(Exception):
    """A deadline passed while waiting on an exec's socket."""


class _ExecEnded(Exception):
    """The exec stopped taking input (its output ended) while sending."""


class _Capped:
    """The first `cap` bytes of a stream, and whether more came."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def add(self, piece: bytes) -> None:
        room = self.cap - len(self.data)
        if len(piece) > room:
            self.truncated = True
            piece = piece[:max(room, 0)]
        self.data += piece


class _ExecSocket:
    """The socket of one exec: send its stdin, read its framed output."""

    def __init__(self, raw: Any) -> None:
        # docker-py hands back the SocketIO the HTTP response was read
        # from; only the socket under it has sendall and shutdown
        # (docker/docker-py#2255), and poll needs it anyway.
        self._raw = raw
        self._sock: socket.socket = raw._sock
        self._pending = bytearray(_unread_bytes(raw, self._sock))
        self._sock.setblocking(False)

    def __enter__(self) -> _ExecSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()
        self._raw.close()

    def quiet(self) -> bool:
        """Nothing to read, not even the end: the other side is waiting.

        For a socket at a point where the exec should say nothing, this
        tells whether it has ended meanwhile (its container stopped).
        """
        if self._pending:
            return False
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        return not poller.poll(0)

    def shutdown_write(self) -> None:
        """End the exec's stdin; its output can still be read."""
        # OSError: the exec already ended, and its status will tell why.
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def send(self, data: bytes, idle: float) -> None:
        """Send `data` whole, keeping whatever the exec writes meanwhile.

        Reading while sending is what keeps a chatty exec (tar -x listing
        error after error) from blocking on its output while this side
        blocks on its input. Raises _ExecEnded when the exec's output ends.
        """
        view = memoryview(data)
        while view:
            ready = _wait(self._sock, select.POLLIN | select.POLLOUT, idle)
            if ready & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._keep_incoming()
            if ready & select.POLLOUT:
                try:
                    sent = self._sock.send(view[:_CHUNK])
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError) as error:
                    raise _ExecEnded from error
                view = view[sent:]

    def read(self, size: int, deadline: float) -> bytes:
        """Up to `size` bytes, b"" at the end; _DeadlinePassed at `deadline`."""
        if self._pending:
            piece = bytes(self._pending[:size])
            del self._pending[:size]
            return piece
        while True:
            _wait(self._sock, select.POLLIN, deadline - time.monotonic())
            try:
                return self._sock.recv(size)
            except BlockingIOError:
                continue

    def reader_until(self, deadline: float) -> Read:
        """A read function that gives up at `deadline` (monotonic)."""
        return lambda size: self.read(size, deadline)

    def idle_reader(self, idle: float) -> Read:
        """A read function that gives up after `idle` s without a byte."""

        def read(size: int) -> bytes:
            try:
                return self.read(size, time.monotonic() + idle)
            except _DeadlinePassed:
                raise ContainerError(
                    f"the exec wrote nothing for {idle} s") from None

        return read

    def _keep_incoming(self) -> None:
        try:
            piece = self._sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except ConnectionResetError as error:
            raise _ExecEnded from error
        if not piece:
            raise _ExecEnded
        self._pending += piece
        if len(self._pending) > _PENDING_CAP:
            raise ContainerError(
                f"the exec wrote more than {_PENDING_CAP} bytes while its "
                "input was still being sent", bytes(self._pending[-4096:]))


def _unread_bytes(raw: Any, sock: socket.socket) -> bytes:
    """Output that http.client read past the response headers.

    The headers were read through a buffered reader, which may already
    hold the first bytes of the exec's output; reading the socket
    directly would lose them (docker/docker-py#425, fix proposed in
    docker/docker-py#2467 but not merged). A non-blocking read1 returns
    what the buffer holds, or b"" without waiting.
    """
    try:
        reader = raw._response.raw._fp.fp
    except AttributeError:
        log.debug("no buffered reader found under the exec socket")
        return b""
    sock.setblocking(False)
    try:
        return cast(bytes, reader.read1(_CHUNK) or b"")
    except BlockingIOError:
        return b""


def _wait(sock: socket.socket, events: int, timeout: float) -> int:
    """poll() one socket; the events that happened, or _DeadlinePassed."""
    if timeout <= 0:
        raise _DeadlinePassed
    poller = select.poll()
    poller.register(sock, events)
    ready = poller.poll(timeout * 1000)
    if not ready:
        raise _DeadlinePassed
    return ready[0][1]


def _send_all(conn: _ExecSocket, chunks: Iterable[bytes], idle: float) -> None:
    """Send every chunk, stopping quietly if the exec stops reading."""
    try:
        for chunk in chunks:
            conn.send(chunk, idle)
    except _ExecEnded:
        log.debug("exec ended while its input was being sent")
    except _DeadlinePassed:
        raise ContainerError(f"the exec took no input for {idle} s") from None


# ---- the exec's output, frame by frame ------------------------------


def _read_exactly(read: Read, size: int) -> bytes:
    """`size` bytes, or fewer if the stream ends first."""
    data = b""
    while len(data) < size:
        piece = read(size - len(data))
        if not piece:
            break
        data += piece
    return data


def _frame_header(read: Read) -> tuple[int, int] | None:
    """(stream, payload length) of the next frame; None at the end."""
    header = _read_exactly(read, _FRAME_HEADER.size)
    if not header:
        return None
    if len(header) < _FRAME_HEADER.size:
        raise ContainerError("the exec's output ended inside a frame header")
    stream, size = _FRAME_HEADER.unpack(header)
    return stream, size


def _frames(read: Read) -> Iterator[tuple[int, bytes]]:
    """(stream, piece) in order; a frame's payload may come in pieces."""
    while (header := _frame_header(read)) is not None:
        stream, left = header
        while left:
            piece = read(min(left, _CHUNK))
            if not piece:
                raise ContainerError("the exec's output ended inside a frame")
            left -= len(piece)
            yield stream, piece


def _stdout_of(frames: Iterable[tuple[int, bytes]],
               stderr: _Capped) -> Iterator[bytes]:
    """Stdout pieces; stderr pieces go to `stderr`."""
    for stream, piece in frames:
        if stream == _STDERR:
            stderr.add(piece)
        else:
            yield piece
