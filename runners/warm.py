"""Pre-started ("warm") sandbox containers, and a pool that keeps them.

Creating and starting a container costs about 0.25 s here, most of a
run. A `WarmContainer` pays it ahead of time: it is created with the
lockdown of a `Sandbox`, its stdin, stdout and stderr attached before it
starts, and its main process (the *driver*, a shell script) waits on
stdin. A run then costs one tar stream in and one out on the same
socket, a few milliseconds:

0. Before it reads anything, the driver says `hello tarpipe list` (GNU
   tar and GNU find are there) or `hello tarpipe all`; it is read when
   the container starts, and a stocked container whose socket has since
   ended (the engine restarted) is never handed out.
1. This side sends one line (the output caps and a random nonce) and
   the sandbox as a tar stream; for `all`, it then closes its half of
   the socket (busybox tar reads to the end of its input).
2. The driver unpacks it into /sandbox (`tar -x`), reports `start`, and
   runs `sh -c ./cyber-dojo.sh` there, stdin from /dev/null, stdout and
   stderr each through a FIFO to a reader that keeps the first cap+1
   bytes in a file under /tmp and drains the rest, so a flood neither
   fills memory nor blocks (or SIGPIPEs) the script.
3. When the script has exited and its output has ended, the driver
   kills every process left (`kill -9 -1`: all of the container's
   processes but its init and the driver) and reports the `result`.
   For `all` it then writes the sandbox as a tar stream on its stdout.
   For `list` it sends a `list` record (every entry's kind, mode, size
   and exact mtime) and reads, NUL-terminated, the names to send, which
   this side picks (`WarmRun.fetch`), then closes its half; the tar
   stream of just those members follows.
4. This side stops reading at that stream's end-of-archive block, and
   at the record saying whether `tar -c` succeeded: it never waits for
   the container to exit, which would cost about 40 ms more.

The driver's records go on the container's stderr, one header line each,
`KIND NONCE NUMBERS...`, some followed by as many bytes as they say::

    untar  NONCE n\\n <n bytes>        tar -x failed (its stderr); the end
    start  NONCE\\n                    the sandbox is unpacked
    result NONCE status n m\\n <n bytes of stdout><m bytes of stderr>
    list   NONCE 0 n\\n <n bytes>      the listing (`list` drivers); with
                                      1 0, none: every file follows
    files  NONCE status n\\n <n bytes> after the tar stream: how tar -c ended

The script runs as the driver's user, so it can write into the
container's stdout and stderr (through /proc/1/fd: the container's init
holds them) and try to forge that report. The nonce, which it never
sees (the driver has read it before the script starts), makes a forged
or garbled record a clean failure (`WarmRun.failure`), and every read
is bounded in bytes (the caps, a little more) and in time
(`max_seconds`, then `io_timeout` per read). A script that reads the
nonce out of the driver's memory (ptrace rights over its own user's
processes) could still forge its own result, and have its forged files
read at `io_timeout` a chunk; no other run is affected.

As with `Sandbox.run`, a process the script leaves behind holding its
stdout or stderr open keeps the run going until it ends or the time
limit passes; one that closed them is killed when the script ends.

A warm container runs once. `ContainerPool` keeps a few ready per image,
refills in the background after each `take`, and removes used ones in
the background too.
"""

from __future__ import annotations

import functools
import hmac
import logging
import operator
import os
import queue
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple

import docker
import docker.errors
import docker.types
import requests
from docker.models.containers import Container

from tarpipe._header import BLOCK
from tarpipe._stream import TarStream
from tarpipe.errors import StreamConsumedError

from .container import (
    MANAGED_LABEL,
    NOBODY_USER,
    PID_LABEL,
    SANDBOX,
    ContainerLimits,
    ExecResult,
    Sandbox,
    _DeadlinePassed,
    _engine,
    _ExecEnded,
    _ExecSocket,
    _frame_header,
    _frames,
    _read_exactly,
    create_container,
    remove_container,
    untar_command,
)
from .errors import ContainerError, EngineError

__all__ = [
    "PIDNS_LABEL",
    "ROLE",
    "ContainerPool",
    "Listed",
    "WarmContainer",
    "WarmRun",
    "dead_leftovers",
    "parse_listing",
    "pid_namespace",
]

log = logging.getLogger(__name__)

#: the boot and pid namespace in which a container's pid label counts
PIDNS_LABEL = "org.tarpipe.pidns"
#: the role label of warm containers
ROLE = "warm"

_STDERR: Final = 2
_ATTACH: Final = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
_KiB: Final = 1024
# tar -x is sent whole records of GNU tar's default size, so that GNU
# tar ends at the end-of-archive block without waiting for end-of-file.
_RECORD: Final = 10 * _KiB
# What the driver's own messages (tar's complaints) may hold.
_MESSAGE_CAP: Final = 4 * _KiB
# The tar stream may overtake the result on the socket (the engine
# copies stdout and stderr separately): this much of it is kept.  At
# 1 MiB a good run of a 3 MB sandbox was once refused under load.  A
# listing driver sends no tar until it is asked, after its records, so
# only busybox images need it; for them, a bound generous enough.
_EARLY_CAP: Final = 16 * 1024 * _KiB
_HEADER_CAP: Final = 128
_ZERO_BLOCK: Final = bytes(BLOCK)
# Member types whose size field is not followed by that much data,
# as tarfile reads them.
_NO_DATA_TYPES: Final = frozenset(b"123456")

_TAR_OUT_GNU: Final = [
    "tar", "-c", "-f", "-", "--format=posix", "--sort=name",
    "--numeric-owner", "--pax-option=delete=atime,delete=ctime",
    "-C", SANDBOX, "."]
_TAR_OUT_BUSYBOX: Final = ["tar", "-c", "-f", "-", "-C", SANDBOX, "."]
# The members named on stdin, NUL-terminated, each alone (a folder
# without its entries), none taken for an option.
_TAR_NAMED_GNU: Final = [
    *_TAR_OUT_GNU[:-1], "--no-recursion", "--null", "--verbatim-files-from",
    "-T", "-"]
# The largest listing of the sandbox sent; a bigger one (over 20,000
# entries of average names) is replaced by all the files.
_LIST_CAP: Final = 4 * 1024 * _KiB

# The driver: POSIX sh, for dash and busybox ash. Its own stdout carries
# only the tar stream; its stderr only the records. Everything before
# `read` runs while the container waits in the pool.
_DRIVER: Final = r"""
set -u
w=/tmp/.tarpipe-warm
mkdir -m 700 "$w" && mkfifo "$w/out" "$w/err" || exit 120
case $(tar --version 2>/dev/null) in *"GNU tar"*) gnu=1 ;; *) gnu= ;; esac
list=
if @LISTS@ && [ -n "$gnu" ] \
    && tar --help 2>/dev/null | grep -q -e --verbatim-files-from \
    && find /dev/null -maxdepth 0 -printf '' 2>/dev/null; then
  list=1; printf 'hello tarpipe list\n' >&2
else
  printf 'hello tarpipe all\n' >&2
fi
IFS=' ' read -r out_cap err_cap nonce || exit 121
case "$out_cap/$err_cap" in *[!0-9/]*|/*|*/) exit 122 ;; esac
if [ -n "$gnu" ]; then @UNTAR_GNU@; else @UNTAR_BUSYBOX@; fi 2>"$w/untar"
if [ $? -ne 0 ]; then
  set -- $(wc -c "$w/untar")
  n=$(($1 < @MESSAGE_CAP@ ? $1 : @MESSAGE_CAP@))
  printf 'untar %s %d\n' "$nonce" "$n" >&2
  head -c "$n" "$w/untar" >&2
  exit 2
fi
printf 'start %s\n' "$nonce" >&2
{ head -c "$out_cap" >"$w/out.txt"; exec cat >/dev/null; } \
  <"$w/out" >/dev/null 2>&1 &
o=$!
{ head -c "$err_cap" >"$w/err.txt"; exec cat >/dev/null; } \
  <"$w/err" >/dev/null 2>&1 &
e=$!
sh -c ./cyber-dojo.sh </dev/null >"$w/out" 2>"$w/err"
status=$?
wait "$o" "$e"
kill -9 -1 2>/dev/null
set -- $(wc -c "$w/out.txt" "$w/err.txt")
printf 'result %s %d %d %d\n' "$nonce" "$status" "$1" "$3" >&2
cat "$w/out.txt" "$w/err.txt" >&2
if [ -n "$list" ] && TZ=UTC0 find @SANDBOX@ -mindepth 1 \
    -printf '%y %m %s %Ts %TS %P\0' >"$w/list" 2>/dev/null \
    && set -- $(wc -c "$w/list") && [ "$1" -le @LIST_CAP@ ]; then
  printf 'list %s 0 %d\n' "$nonce" "$1" >&2
  cat "$w/list" >&2; rm -f "$w/list"
  @TAR_NAMED_GNU@ 2>"$w/tar"
else
  [ -z "$list" ] || printf 'list %s 1 0\n' "$nonce" >&2
  rm -f "$w/list"
  if [ -n "$gnu" ]; then @TAR_OUT_GNU@; else @TAR_OUT_BUSYBOX@; fi 2>"$w/tar"
fi
status=$?
[ -s "$w/tar" ] || { printf 'files %s %d 0\n' "$nonce" "$status" >&2; exit; }
set -- $(wc -c "$w/tar")
n=$(($1 < @MESSAGE_CAP@ ? $1 : @MESSAGE_CAP@))
printf 'files %s %d %d\n' "$nonce" "$status" "$n" >&2
head -c "$n" "$w/tar" >&2
"""


def _driver_script(as_root: bool, lists: bool) -> str:
    """The driver; `lists`: list the sandbox, send only what is asked."""
    def untar(gnu_tar: bool) -> str:
        return shlex.join(untar_command(SANDBOX, gnu_tar=gnu_tar,
                                        as_root=as_root))

    parts = {
        "@UNTAR_GNU@": untar(True),
        "@UNTAR_BUSYBOX@": untar(False),
        "@TAR_OUT_GNU@": shlex.join(_TAR_OUT_GNU),
        "@TAR_OUT_BUSYBOX@": shlex.join(_TAR_OUT_BUSYBOX),
        "@TAR_NAMED_GNU@": shlex.join(_TAR_NAMED_GNU),
        "@SANDBOX@": SANDBOX,
        "@LIST_CAP@": str(_LIST_CAP),
        "@MESSAGE_CAP@": str(_MESSAGE_CAP),
        "@LISTS@": "true" if lists else "false",
    }
    script = _DRIVER
    for mark, text in parts.items():
        script = script.replace(mark, text)
    return script


class Listed(NamedTuple):
    """One entry of the sandbox as the driver listed it after the run.

    `kind` is "file", "directory", "symlink", or another word for what
    the sandbox must not hold ("fifo", "socket", "device", "unknown");
    `mode` the permission bits; `mtime_ns` exact.
    """

    kind: str
    mode: int
    size: int
    mtime_ns: int


_LISTED_KINDS: Final = {b"f": "file", b"d": "directory", b"l": "symlink",
                        b"p": "fifo", b"s": "socket", b"b": "device",
                        b"c": "device"}
_LISTED: Final = re.compile(
    rb"([a-zA-Z]) ([0-7]{1,7}) ([0-9]{1,20}) (-?[0-9]{1,20}) "
    rb"[0-9]{2}(?:\.([0-9]{1,10}))? (.+)", re.DOTALL)


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def parse_listing(data: bytes) -> dict[str, Listed]:
    """The driver's listing: `find -printf '%y %m %s %Ts %TS %P\\0'`.

    `%Ts` is the whole second (floored, as the kernel keeps it) and the
    fraction of `%TS` the nanoseconds, so times before 1970 come out
    right too (`%T@` prints them as -101.5 for -100.5 s). Raises
    ContainerError for an entry that is not of that form.
    """
    listing: dict[str, Listed] = {}
    for entry in data.split(b"\0")[:-1] if data else []:
        match = _LISTED.fullmatch(entry)
        if match is None:
            raise ContainerError(f"the sandbox listing has a garbled entry: "
                                 f"{entry[:80]!r}")
        kind, mode, size, seconds, fraction, name = match.groups()
        nanoseconds = int((fraction or b"").ljust(9, b"0")[:9])
        listing[name.decode("utf-8", "surrogateescape")] = Listed(
            _LISTED_KINDS.get(kind, "unknown"), int(mode, 8), int(size),
            int(seconds) * 1_000_000_000 + nanoseconds)
    if data and not data.endswith(b"\0"):
        raise ContainerError("the sandbox listing ends inside an entry")
    return listing


@dataclass(frozen=True)
class WarmRun:
    """What one run in a warm container did, and the files it left.

    `result` is as `Sandbox.run` reports it, except that `duration` runs
    from the driver's `start` record to its `result` record, and that a
    run that timed out has no output at all (it stays in the killed
    container). `files` is the sandbox after the run, a tar stream read
    lazily from the socket (GNU tar: PAX, nanosecond mtimes, names `./a`;
    pipe it into `tarpipe.retar`); it ends with its end-of-archive
    blocks, raises ContainerError if `tar -c` failed, and can be read
    once (StreamConsumedError the second time). When the run timed out
    or failed, reading `files` raises ContainerError at once.

    `listing`, from an image with GNU tar and GNU find, is every entry
    of the sandbox after the run, by name; `fetch(names)` is then a
    stream of just those members (each folder alone, without its
    entries), so that files a run left as they were need not travel.
    Without a listing (busybox, or a sandbox too big to list), `fetch`
    gives all the files, as `files` does. Only one of `files` and
    `fetch` can be read.

    `failure` is empty, or says why the run has no trustworthy result:
    the driver's report was garbled or forged, or the driver died. Then
    `result.status` is None and `result.timed_out` False. When only the
    listing that follows a good result failed, the result stands and
    `failure` says the files cannot be had.

    Close it (or use it as a context manager) if `files` is not read to
    its end: that closes the socket.
    """

    result: ExecResult
    files: TarStream
    failure: str = ""
    listing: Mapping[str, Listed] | None = None
    _fetch: Callable[[list[str]], TarStream] | None = field(
        default=None, repr=False, compare=False)
    _release: Callable[[], None] = field(default=lambda: None, repr=False,
                                         compare=False)

    def fetch(self, names: Iterable[str]) -> TarStream:
        """The members `names` of the listing (all, without one)."""
        if self._fetch is None or self.listing is None:
            return self.files
        return self._fetch(sorted(names, key=_name_bytes))

    def close(self) -> None:
        """Stop reading `files` and close the socket; harmless twice."""
        self.files.close()
        self._release()

    def __enter__(self) -> WarmRun:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class WarmContainer:
    """A sandbox container started ahead of its one run; see the module.

    The container has the lockdown of a `Sandbox` (no network, read-only
    root, tmpfs /sandbox and /tmp, no capabilities, `limits`), no log
    (its output is the run's files, not worth a disk), and runs as
    `user`. `start` creates and starts it; `run` runs it once; `remove`
    removes it. As a context manager it is started on entry and removed
    on exit.

    `io_timeout` bounds, in seconds, each wait for the engine outside the
    script's run: sending the sandbox, the unpacking, each read of the
    files.

    `sandbox_dir`, a host folder, is bind-mounted at /sandbox in place of
    the tmpfs (the katas-volume runner's way): send an empty archive and
    close the run without reading its files, which are already there.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        *,
        limits: ContainerLimits = ContainerLimits(),
        user: str = NOBODY_USER,
        io_timeout: float = 60.0,
        sandbox_dir: str | None = None,
    ) -> None:
        self.client = client
        self.image = image
        self.limits = limits
        self.user = user
        self.io_timeout = io_timeout
        self._sandbox = Sandbox(client, image, limits=limits, user=user,
                                sandbox_dir=sandbox_dir,
                                role=ROLE)
        self._container: Container | None = None
        self._conn: _ExecSocket | None = None
        self._used = False
        # Whether the driver lists the sandbox after a run (its hello).
        self._lists = False

    def __enter__(self) -> WarmContainer:
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
    def id(self) -> str:
        """The container's id; ContainerError before `start`."""
        if self._container is None:
            raise ContainerError("the warm container is not started")
        return str(self._container.id)

    @property
    def ready(self) -> bool:
        """Started, not run yet, and its driver still waiting for a run.

        False once the container has stopped (the engine restarted, say):
        its socket has ended.
        """
        return (self._conn is not None and not self._used
                and self._conn.quiet())

    def start(self) -> None:
        """Create the container, attach to it, start it.

        Attaching comes first, so that nothing the driver writes is lost.
        Raises ImageNotFoundError, EngineError or ContainerError; a
        container made before the failure is removed.
        """
        if self._container is not None:
            raise ContainerError("a warm container is started once")
        self._container = self._create()
        try:
            with _engine(f"attach to container {self.id[:12]}"):
                raw = self.client.api.attach_socket(self.id, params=_ATTACH)
            self._conn = _ExecSocket(raw)
            with _engine(f"start container {self.id[:12]}"):
                self._container.start()
            self._lists = _read_hello(self._conn, self.io_timeout)
        except BaseException:
            log.warning("warm container %s did not start; removing it",
                        self.id[:12])
            self.remove()
            raise
        log.debug("started warm container %s from %s", self.id[:12],
                  self.image)

    def run(
        self,
        chunks: Iterable[bytes],
        *,
        max_seconds: float,
        stdout_cap: int = 50 * 1024,
        stderr_cap: int = 50 * 1024,
    ) -> WarmRun:
        """Unpack tar stream `chunks` into /sandbox, run cyber-dojo.sh there.

        The chunks are sent as they come, never joined. `max_seconds`
        bounds the script's run: from the moment the sandbox is unpacked
        (the driver's `start` record arrives) until its result arrives,
        which includes the ending of its output, the killing of whatever
        it left running and the sending of its (capped) output. When it
        passes, the container is killed and the result says `timed_out`.
        Unpacking and reading the files back are bounded by `io_timeout`
        per wait instead.

        Raises ContainerError when the sandbox cannot be unpacked (with
        tar's stderr) or the container dies or stalls before the script
        starts; after that, every problem is in the returned WarmRun.
        The socket is closed by then unless `files` is still to be read.
        """
        if stdout_cap < 0 or stderr_cap < 0 or not max_seconds > 0:
            raise ValueError("the caps must be >= 0 and max_seconds > 0")
        conn = self._claim()
        nonce = secrets.token_hex(16)
        report = _Report(nonce, stdout_cap + 1, stderr_cap + 1)
        talk = _Conversation(conn, report, self.io_timeout, self._lists)
        try:
            head = f"{stdout_cap + 1} {stderr_cap + 1} {nonce}\n".encode()
            self._send(conn, head, chunks)
            talk.wait_for_start()
            return self._finish(talk, max_seconds, stdout_cap, stderr_cap)
        except BaseException:
            talk.close()
            raise

    def kill(self) -> None:
        """Kill every process of the container at once (SIGKILL)."""
        if self._container is None:
            return
        try:
            self._container.kill()
        except docker.errors.APIError as error:
            # Stopped already (its driver died), or being removed: dead
            # either way, as wanted.
            log.debug("killing warm container %s: %s", self.id[:12],
                      error.explanation or error)
        except (docker.errors.DockerException,
                requests.exceptions.RequestException) as error:
            # No engine to ask (it is restarting, say): its containers
            # stop with it; removing this one is tried later.
            log.warning("cannot kill warm container %s: %s", self.id[:12],
                        error)

    def close(self) -> None:
        """Close the attach socket, if still open; the container stays."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def remove(self) -> None:
        """Close the socket and remove the container; harmless twice."""
        self.close()
        if self._container is not None:
            # Forgotten only once gone: a removal the engine could not
            # be reached for can be tried again.
            remove_container(self.client, str(self._container.id))
            self._container = None

    # -- the steps of a run ----------------------------------------------

    def _create(self) -> Container:
        options = self._sandbox._create_options()
        options["labels"][PIDNS_LABEL] = pid_namespace()
        # A bind-mounted sandbox is not read back: no listing.
        lists = self._sandbox.sandbox_mount is None
        command = ["sh", "-c", _driver_script(self._sandbox.uid == 0, lists),
                   "tarpipe-warm"]
        options.update(stdin_open=True, tty=False,
                       log_config=docker.types.LogConfig(type="none"))
        return create_container(self.client, self.image, command, options)

    def _claim(self) -> _ExecSocket:
        if self._used:
            raise ContainerError("a warm container runs once; take another")
        if self._conn is None:
            raise ContainerError("the warm container is not started")
        self._used = True
        return self._conn

    def _send(self, conn: _ExecSocket, head: bytes,
              chunks: Iterable[bytes]) -> None:
        """The head line, the chunks, zeros up to a whole record; then EOF."""
        sent = 0
        try:
            conn.send(head, self.io_timeout)
            for chunk in chunks:
                conn.send(chunk, self.io_timeout)
                sent += len(chunk)
            if sent % _RECORD:
                conn.send(bytes(_RECORD - sent % _RECORD), self.io_timeout)
        except _ExecEnded:
            log.debug("warm container %s stopped taking input",
                      self.id[:12])
        except _DeadlinePassed:
            raise ContainerError(f"container {self.id[:12]} took no input "
                                 f"for {self.io_timeout} s") from None
        if not self._lists:
            # busybox tar reads to the end of its input; a listing
            # driver reads the names to send after the run.
            conn.shutdown_write()

    def _finish(self, talk: _Conversation, max_seconds: float,
                stdout_cap: int, stderr_cap: int) -> WarmRun:
        started = time.monotonic()
        try:
            result = talk.wait_for_result(started + max_seconds)
        except _DeadlinePassed:
            log.debug("warm container %s passed %.1f s: killing it",
                      self.id[:12], max_seconds)
            talk.close()
            self.kill()
            return WarmRun(
                ExecResult(b"", b"", False, False, None, True,
                           time.monotonic() - started),
                TarStream(_no_files("the run timed out: its files are gone")))
        except _Failure as failure:
            log.warning("warm container %s: %s", self.id[:12], failure)
            talk.close()
            self.kill()
            return WarmRun(
                ExecResult(b"", b"", False, False, None, False,
                           time.monotonic() - started),
                TarStream(_no_files(f"the run failed: {failure}")),
                str(failure))
        status, stdout, stderr = result
        log.debug("warm container %s: status %d", self.id[:12], status)
        run = ExecResult(stdout[:stdout_cap], stderr[:stderr_cap],
                         len(stdout) > stdout_cap, len(stderr) > stderr_cap,
                         status, False, time.monotonic() - started)
        try:
            listing = talk.wait_for_listing()
        except (_Failure, ContainerError) as error:
            reason = f"the sandbox listing failed: {error}"
            log.warning("warm container %s: %s", self.id[:12], reason)
            talk.close()
            return WarmRun(run, TarStream(_no_files(reason)), reason)
        return WarmRun(
            run, TarStream(talk.files()), listing=listing,
            _fetch=lambda names: TarStream(talk.files(names)),
            _release=talk.close)


def _no_files(reason: str) -> Generator[bytes, None, None]:
    """Files that are not there: the first read raises ContainerError."""
    yield from ()
    raise ContainerError(reason)


# ---- the conversation with the driver ------------------------------------


class _Failure(Exception):
    """The driver's report cannot be trusted, or never came."""


@dataclass(frozen=True)
class _Record:
    """One record of the driver: its kind, its numbers, its bytes."""

    kind: str
    numbers: tuple[int, ...]
    data: bytes


# kind -> what the numbers after the nonce are: "status", or "size" (of
# a part of the bytes that follow the header)
_FIELDS: Final = {"untar": ("size",), "start": (),
                  "result": ("status", "size", "size"),
                  "list": ("status", "size"),
                  "files": ("status", "size")}
# after each record, the kinds that may come next
_NEXT: Final = {"": ("untar", "start"), "untar": (), "start": ("result",),
                "result": ("list", "files"), "list": ("files",),
                "files": ()}
_HEADER: Final = re.compile(
    rb"([a-z]{1,8}) ([0-9a-f]{32})((?: [0-9]{1,10})*)\n")


class _Report:
    """The driver's records, parsed from its stderr as pieces arrive.

    Holds at most one header line and the data of one record (whose size
    is checked against its cap first), and one piece beyond: the caller
    reads the records out after each piece. Raises _Failure for anything
    but the expected records in the expected order.
    """

    def __init__(self, nonce: str, stdout_cap: int, stderr_cap: int) -> None:
        self._nonce = nonce.encode()
        # the largest value of each number of each kind
        self._caps = {"untar": (_MESSAGE_CAP,), "start": (),
                      "result": (255, stdout_cap, stderr_cap),
                      "list": (1, _LIST_CAP),
                      "files": (255, _MESSAGE_CAP)}
        self._buffer = bytearray()
        self._last = ""
        self._pending: tuple[str, tuple[int, ...], int] | None = None

    def feed(self, piece: bytes) -> None:
        """Take `piece`; read the records it completes with `next_record`."""
        self._buffer += piece

    def next_record(self) -> _Record | None:
        """The next complete record, or None until more is fed.

        Each record is checked only when asked for, so that one that
        follows a good record in the same piece (a forgery written just
        after it) fails the step it belongs to, not the one before.
        """
        if self._pending is None:
            end = self._buffer.find(b"\n", 0, _HEADER_CAP)
            if end < 0:
                if len(self._buffer) >= _HEADER_CAP:
                    raise _Failure(f"the driver's report is garbled: "
                                   f"{bytes(self._buffer[:60])!r}...")
                return None
            self._pending = self._header(bytes(self._buffer[:end + 1]))
            del self._buffer[:end + 1]
        kind, numbers, size = self._pending
        if len(self._buffer) < size:
            return None
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._pending = None
        return _Record(kind, numbers, data)

    def _header(self, line: bytes) -> tuple[str, tuple[int, ...], int]:
        match = _HEADER.fullmatch(line)
        if match is None:
            raise _Failure(f"the driver's report is garbled: {line!r}")
        kind = match[1].decode()
        if kind not in _NEXT[self._last]:
            expected = " or ".join(_NEXT[self._last]) or "nothing"
            raise _Failure(f"the driver's report has {kind!r} where "
                           f"{expected} belongs")
        if not hmac.compare_digest(match[2], self._nonce):
            raise _Failure(f"the driver's {kind!r} record is forged")
        numbers = tuple(int(word) for word in match[3].split())
        caps = self._caps[kind]
        if len(numbers) != len(caps) or any(map(operator.gt, numbers, caps)):
            raise _Failure(f"the driver's {kind!r} record is out of bounds: "
                           f"{line!r}")
        self._last = kind
        size = sum(number for number, what
                   in zip(numbers, _FIELDS[kind], strict=True)
                   if what == "size")
        return kind, numbers, size


class _Conversation:
    """One run's socket: records from stderr, the tar stream from stdout.

    Reads wait until `deadline` (monotonic), or when it is None for
    `io_timeout` seconds each. The engine copies the container's stdout
    and stderr separately, so the tar stream may begin before the result
    record is read: up to _EARLY_CAP of it is kept meanwhile.
    """

    def __init__(self, conn: _ExecSocket, report: _Report,
                 io_timeout: float, lists: bool) -> None:
        self.conn = conn
        self.report = report
        self.io_timeout = io_timeout
        self.deadline: float | None = None
        self.early = bytearray()
        #: whether the driver sends a `list` record and waits for names
        self.lists = lists
        #: the listing, when the driver sent one (waiting for names)
        self.listing: dict[str, Listed] | None = None
        self._asked = False
        #: the `files` record, once read
        self._ending: _Record | None = None
        self._events = self._read_events()

    def close(self) -> None:
        self._events.close()
        self.conn.close()

    def wait_for_start(self) -> None:
        """Return once the sandbox is unpacked; ContainerError otherwise."""
        try:
            record = self._next_record()
        except _DeadlinePassed:
            raise ContainerError(f"the warm container said nothing for "
                                 f"{self.io_timeout} s") from None
        except _Failure as failure:
            raise ContainerError(
                f"the warm container failed: {failure}") from None
        if record is None:
            raise ContainerError("the warm container ended before its "
                                 "script started")
        if record.kind == "untar":
            raise ContainerError("tar -x in the warm container failed",
                                 record.data)

    def wait_for_result(self, deadline: float) -> tuple[int, bytes, bytes]:
        """(status, stdout, stderr); _DeadlinePassed or _Failure."""
        self.deadline = deadline
        record = self._next_record()
        self.deadline = None
        if record is None:
            raise _Failure("the driver ended without a result")
        status, out_size, _ = record.numbers
        return status, record.data[:out_size], record.data[out_size:]

    def wait_for_listing(self) -> dict[str, Listed] | None:
        """The sandbox listing, from a driver that lists; else None.

        _Failure or ContainerError when the driver that lists does not.
        """
        if not self.lists:
            return None
        try:
            record = self._next_record()
        except _DeadlinePassed:
            raise ContainerError(f"the warm container sent no listing for "
                                 f"{self.io_timeout} s") from None
        if record is None or record.kind != "list":
            raise _Failure("the driver sent no listing")
        if record.numbers[0] == 0:
            self.listing = parse_listing(record.data)
        return self.listing

    def files(self, names: list[str] | None = None
              ) -> Generator[bytes, None, None]:
        """The tar stream but its end-of-archive blocks; see WarmRun.files.

        With a listing, the members `names` (None: all listed) are asked
        for first. The TarStream around it adds the end-of-archive
        blocks once this ends without error.
        """
        self._ask(names)
        try:
            yield from self._archive()
            if self._ending is None:
                self._ending = self._next_record(keep_stdout=False)
        except _DeadlinePassed:
            raise ContainerError(f"the warm container sent nothing for "
                                 f"{self.io_timeout} s") from None
        except _Failure as failure:
            raise ContainerError(f"reading the files: {failure}") from None
        finally:
            self.close()
        _check_tar_out(self._ending)

    def _ask(self, names: list[str] | None) -> None:
        """Send the names of the members wanted, if the driver waits."""
        if self._asked:
            raise StreamConsumedError("the files of a warm run can be read "
                                      "once, through `files` or `fetch`")
        self._asked = True
        if not self.lists:
            return
        if self.listing is not None:
            wanted = sorted(self.listing, key=_name_bytes) \
                if names is None else names
            if any("\0" in name for name in wanted):
                raise ValueError("a member name cannot hold NUL")
            try:
                self.conn.send(b"".join(_name_bytes(name) + b"\0"
                                        for name in wanted), self.io_timeout)
            except _ExecEnded:
                pass  # what it sends, if anything, will say why
            except _DeadlinePassed:
                raise ContainerError(f"the warm container took no names "
                                     f"for {self.io_timeout} s") from None
        self.conn.shutdown_write()

    def _archive(self) -> Iterator[bytes]:
        """The stream before its end-of-archive block."""
        end = _ArchiveEnd()
        early, self.early = bytes(self.early), bytearray()
        if part := end.take(early):
            yield part
        while not end.ended:
            piece = self._next_stdout()
            if piece is None:
                _check_tar_out(self._ending)
                raise ContainerError("the files ended before their "
                                     "end-of-archive block")
            if part := end.take(piece):
                yield part

    def _next_record(self, keep_stdout: bool = True) -> _Record | None:
        """The next record; stdout pieces met meanwhile kept (or dropped)."""
        for event in self._events:
            if isinstance(event, _Record):
                return event
            if keep_stdout:
                self._keep_early(event)
        return None

    def _next_stdout(self) -> bytes | None:
        """The next stdout piece; a `files` record met meanwhile is kept."""
        for event in self._events:
            if not isinstance(event, _Record):
                return event
            # The engine copied stderr first: tar -c ended, and this
            # says how, but the stream must still be read to its end.
            self._ending = event
        return None

    def _keep_early(self, piece: bytes) -> None:
        if len(self.early) + len(piece) > _EARLY_CAP:
            raise _Failure(f"the driver wrote more than {_EARLY_CAP} bytes "
                           "of files before its result")
        self.early += piece

    def _read_events(self) -> Generator[_Record | bytes, None, None]:
        """Records from the stderr channel and stdout pieces, as they come."""
        for stream, piece in _frames(self._read):
            if stream != _STDERR:
                yield piece
                continue
            self.report.feed(piece)
            while (record := self.report.next_record()) is not None:
                yield record

    def _read(self, size: int) -> bytes:
        deadline = self.deadline
        if deadline is None:
            deadline = time.monotonic() + self.io_timeout
        try:
            return self.conn.read(size, deadline)
        except ConnectionResetError:
            return b""


_HELLO: Final = re.compile(rb"hello tarpipe (list|all)\n")


def _read_hello(conn: _ExecSocket, io_timeout: float) -> bool:
    """Read the driver's first line; whether it lists the sandbox.

    The driver writes it before it reads anything, so nothing but it
    can be on the socket yet; it is read frame by frame, never beyond.
    """
    line = b""
    deadline = time.monotonic() + io_timeout
    read = conn.reader_until(deadline)
    try:
        while not line.endswith(b"\n"):
            header = _frame_header(read)
            if header is None or header[0] != _STDERR \
                    or len(line) + header[1] > _HEADER_CAP:
                break
            line += _read_exactly(read, header[1])
    except _DeadlinePassed:
        raise ContainerError(f"the warm container said nothing for "
                             f"{io_timeout} s after it started") from None
    match = _HELLO.fullmatch(line)
    if match is None:
        raise ContainerError(f"the warm container's driver did not start: "
                             f"{line[:80]!r}")
    return match[1] == b"list"


def _check_tar_out(ending: _Record | None) -> None:
    """Raise ContainerError unless the `files` record says tar succeeded."""
    if ending is None:
        raise ContainerError("the warm container ended without saying how "
                             "tar -c ended")
    status = ending.numbers[0]
    if status != 0:
        raise ContainerError(f"tar -c in the warm container ended with "
                             f"status {status}", ending.data)


class _ArchiveEnd:
    """Finds where a tar stream's end-of-archive block starts, in flight.

    Headers are passed on whole, so the zero block that ends the archive
    never is: the archive is ended here (by TarStream) once tar is known
    to have succeeded. Sizes are read from the ustar field (octal or base-256),
    not from PAX records, so a member over 8 GiB would be misread: the
    caller's retar refuses one long before (`Limits.max_file_bytes`).
    """

    def __init__(self) -> None:
        self.ended = False
        self._header = bytearray()
        self._data_left = 0

    def take(self, piece: bytes) -> bytes:
        """The part of `piece` before the end-of-archive block."""
        parts: list[bytes | memoryview] = []
        view = memoryview(piece)
        while view and not self.ended:
            if self._data_left:
                step = min(self._data_left, len(view))
                parts.append(view[:step])
                self._data_left -= step
            else:
                step = min(BLOCK - len(self._header), len(view))
                self._header += view[:step]
                if len(self._header) == BLOCK:
                    parts.append(self._whole_header())
            view = view[step:]
        return b"".join(parts)

    def _whole_header(self) -> bytes:
        header = bytes(self._header)
        self._header.clear()
        if header == _ZERO_BLOCK:
            self.ended = True
            return b""
        if header[156] not in _NO_DATA_TYPES:
            self._data_left = -(-_member_size(header) // BLOCK) * BLOCK
        return header


def _member_size(header: bytes) -> int:
    field = header[124:136]
    if field[0] == 0x80:  # base-256, positive
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise ContainerError("the files' tar stream has a corrupt header",
                             header[:100].rstrip(b"\0")) from None


@functools.cache
def pid_namespace() -> str:
    """This process's boot and pid namespace, as a label value.

    A pid label means something only there: another machine, or another
    container sharing the engine, has pids of its own. Empty when /proc
    does not tell.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}.{namespace}"


def dead_leftovers(client: docker.DockerClient) -> list[str]:
    """Ids of warm containers whose maker has died, in this pid namespace.

    Only containers labelled with this process's pid namespace count, so
    other machines' and other containers' runs are never touched; nor
    are those of live processes (a pid reused since counts as live).
    """
    namespace = pid_namespace()
    if not namespace:
        return []
    labels = [f"{MANAGED_LABEL}=1", f"{PIDNS_LABEL}={namespace}"]
    with _engine("list containers"):
        found = client.api.containers(all=True, filters={"label": labels})
    dead = []
    for entry in found:
        pid = (entry.get("Labels") or {}).get(PID_LABEL, "")
        if pid.isdigit() and not _alive(int(pid)):
            dead.append(str(entry["Id"]))
    return dead


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


# ---- the pool -------------------------------------------------------------


_Task = Callable[[], None]
# How long a closing pool keeps trying removals the engine refused.
_RETRY_SECONDS: Final = 20.0
# Threads removing used containers, each one removal at a time.
_REMOVERS: Final = 4


class ContainerPool:
    """Warm containers started ahead of need, a few per image; thread-safe.

    `take(image)` hands out a started container, used once, then given
    back (`give_back`), which removes it in the background. After each
    take a background thread starts containers of that image until
    `size` are ready (the first take of an image starts its stock).
    Creating a pool removes, in the background, the warm containers left
    by processes that died (see `dead_leftovers`). `close` (or the end of
    a `with` block) removes every container of the pool.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        limits: ContainerLimits = ContainerLimits(),
        size: int = 2,
        io_timeout: float = 60.0,
    ) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size!r}")
        self.client = client
        self.limits = limits
        self.size = size
        self.io_timeout = io_timeout
        self._lock = threading.Lock()
        self._stock: dict[str, list[WarmContainer]] = {}
        self._refills: dict[str, threading.Thread] = {}
        self._closed = False
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        for container_id in dead_leftovers(client):
            log.warning("removing warm container %s, left by a process "
                        "that died", container_id[:12])
            self._tasks.put(functools.partial(remove_container, client,
                                              container_id))
        # Removing takes the engine longer than a run takes this side:
        # one remover alone falls behind under load, and the containers
        # waiting for it pile up, in the engine and in memory here.
        self._removers = [
            threading.Thread(target=self._remove_used, daemon=True,
                             name=f"tarpipe-pool-remover-{number}")
            for number in range(_REMOVERS)]
        for remover in self._removers:
            remover.start()

    def __enter__(self) -> ContainerPool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def take(self, image: str) -> WarmContainer:
        """A started warm container of `image`, ready at once if in stock.

        Otherwise one is started now (about 0.25 s), which raises as
        `WarmContainer.start` does. Raises ContainerError once closed.
        """
        dead: list[WarmContainer] = []
        with self._lock:
            if self._closed:
                raise ContainerError("the container pool is closed")
            stock = self._stock.setdefault(image, [])
            ready = None
            while stock and ready is None:
                ready = stock.pop(0)
                if not ready.ready:
                    dead.append(ready)
                    ready = None
        for container in dead:
            log.warning("warm container %s stopped while in stock: "
                        "removing it", container.id[:12])
            self.give_back(container)
        if ready is None:
            log.debug("no warm container of %s in stock: starting one",
                      image)
            ready = self._start(image)
        self._refill(image)
        return ready

    def give_back(self, container: WarmContainer) -> None:
        """Hand back a container taken from the pool, run or not.

        Its socket is closed now; the container is removed in the
        background (at once, after `close`).
        """
        container.close()
        with self._lock:
            if not self._closed:
                self._tasks.put(container.remove)
                return
        container.remove()

    def stock(self, image: str) -> int:
        """How many started containers of `image` are ready now."""
        with self._lock:
            return len(self._stock.get(image, ()))

    def close(self, timeout: float = 30.0) -> None:
        """Stop refilling, and remove every container of the pool.

        Waits up to `timeout` seconds for the refills and removals under
        way; what is left then is logged and left to a later pool.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = [each for stock in self._stock.values() for each in stock]
            self._stock.clear()
            refills = list(self._refills.values())
        for container in idle:
            container.close()
            self._tasks.put(container.remove)
        deadline = time.monotonic() + timeout
        for thread in refills:
            thread.join(max(0.0, deadline - time.monotonic()))
        for _ in self._removers:
            self._tasks.put(None)
        for remover in self._removers:
            remover.join(max(0.0, deadline - time.monotonic()))
        if any(remover.is_alive() for remover in self._removers):
            log.warning("container pool: removals still going on after "
                        "%.0f s", timeout)
        log.debug("container pool closed")

    # -- the background threads ----------------------------------------------

    def _start(self, image: str) -> WarmContainer:
        container = WarmContainer(self.client, image, limits=self.limits,
                                  io_timeout=self.io_timeout)
        container.start()
        return container

    def _refill(self, image: str) -> None:
        with self._lock:
            if self._closed or image in self._refills or not self.size:
                return
            thread = threading.Thread(
                target=self._refill_stock, args=(image,),
                name=f"tarpipe-pool-refill {image}", daemon=True)
            self._refills[image] = thread
            thread.start()

    def _refill_stock(self, image: str) -> None:
        while self._wants_more(image):
            try:
                container = self._start(image)
            except Exception as error:
                log.warning("container pool: cannot start a container of "
                            "%s: %s", image, error)
                with self._lock:
                    del self._refills[image]
                return
            with self._lock:
                kept = not self._closed
                if kept:
                    self._stock[image].append(container)
            if not kept:
                container.remove()

    def _wants_more(self, image: str) -> bool:
        """Whether the stock of `image` is short; if not, the refill ends."""
        with self._lock:
            if not self._closed and len(self._stock[image]) < self.size:
                return True
            del self._refills[image]
            return False

    def _remove_used(self) -> None:
        """Run the removals; those the engine could not be reached for
        (it is restarting, say) are tried again after each later one,
        and at the end until `_RETRY_SECONDS` have passed."""
        again: list[_Task] = []
        while (task := self._tasks.get()) is not None:
            again = [each for each in [task, *again]
                     if not _done(each, again_later=True)]
        deadline = time.monotonic() + _RETRY_SECONDS
        while again and time.monotonic() < deadline:
            time.sleep(0.5)
            again = [each for each in again
                     if not _done(each, again_later=True)]
        for each in again:
            _done(each, again_later=False)


def _done(task: _Task, *, again_later: bool) -> bool:
    """Run `task`; False if it should be tried again (no engine)."""
    try:
        task()
    except EngineError as error:
        if again_later:
            log.debug("container pool: %s; trying again later", error)
            return False
        log.warning("container pool: %s", error)
    except Exception as error:
        log.warning("container pool: %s", error)
    return True
