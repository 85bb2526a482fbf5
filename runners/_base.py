"""What the three runners share: checking a request, results, kata locks."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import docker

from tarpipe import Limits, TarStream, pack_files
from tarpipe.errors import LimitExceededError, UnsafeMemberError
from tarpipe.filediff import FileDiff, FileState

from .container import ExecResult
from .errors import BadRequestError
from .warm import WarmRun

__all__ = ["RunResult", "Runner", "check_request"]

KATA_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SCRIPT = "cyber-dojo.sh"

Clock = Callable[[], int]


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run of `cyber-dojo.sh`.

    `created`, `deleted` and `changed` are paths relative to the sandbox,
    compared with the sandbox as it was just before the script started
    (visible files already written); they are empty when the sandbox is
    not read back (a timed-out run in a container that is gone).
    """

    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    status: int | None
    timed_out: bool
    duration: float
    created: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    #: when not empty, why the files the run left were not kept (an unsafe
    #: member, a limit passed): the kata is then as it was before the run
    rejected: str = ""

    @classmethod
    def of(cls, run: ExecResult, files: FileDiff = FileDiff(), *,
           rejected: str = "") -> RunResult:
        """Decode a finished exec and attach what it did to the files."""
        return cls(
            stdout=run.stdout.decode("utf-8", "replace"),
            stderr=run.stderr.decode("utf-8", "replace"),
            stdout_truncated=run.stdout_truncated,
            stderr_truncated=run.stderr_truncated,
            status=run.status,
            timed_out=run.timed_out,
            duration=run.duration,
            created=files.created,
            deleted=files.deleted,
            changed=files.changed,
            rejected=rejected,
        )


def run_message(run: ExecResult) -> str:
    """The commit message of a run: its outcome first, then the figures."""
    if run.timed_out:
        subject = f"timed out after {run.duration:.1f} s"
    else:
        subject = f"exit status {run.status} in {run.duration:.2f} s"
    return (f"{subject}\n\nstatus: {run.status}\n"
            f"timed-out: {'yes' if run.timed_out else 'no'}\n"
            f"duration-ms: {round(run.duration * 1000)}\n")


def check_kata_id(kata_id: str) -> None:
    """Refuse a kata id that could name anything but one kata's folder."""
    if not isinstance(kata_id, str) or not KATA_ID_PATTERN.fullmatch(kata_id):
        raise BadRequestError(
            f"kata id {kata_id!r} is not a plain identifier "
            "(letters, digits, '_' and '-', at most 64, not first '-')")


def check_request(
    kata_id: str, files: Mapping[str, bytes | str], max_seconds: float
) -> dict[str, bytes]:
    """Refuse a bad request before any container starts.

    Returns the visible files as bytes.  Raises `BadRequestError` for a
    kata id that is not a plain identifier, a missing `cyber-dojo.sh` or
    a time limit that is not a positive number, and tarpipe's
    `UnsafeMemberError` for an unsafe file name.
    """
    check_kata_id(kata_id)
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float):
        raise BadRequestError(f"max_seconds must be a number, not {max_seconds!r}")
    if not 0 < max_seconds <= 3600:
        raise BadRequestError(
            f"max_seconds must be > 0 and at most 3600, not {max_seconds!r}")
    if SCRIPT not in files:
        raise BadRequestError(f"the visible files have no {SCRIPT!r} to run")
    visible = {name: _as_bytes(name, content) for name, content in files.items()}
    # pack_files checks every name as it is called, before any member is
    # made: the stream itself is not wanted here.
    pack_files(visible, mtime_ns=0).close()
    return visible


def _as_bytes(name: str, content: Any) -> bytes:
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, bytes):
        return content
    raise BadRequestError(
        f"visible file {name!r} must be str or bytes, not {type(content).__name__}")


def files_back(done: WarmRun, before: Mapping[str, FileState]
               ) -> tuple[TarStream, dict[str, FileState]]:
    """What to read of a finished run's files, and what it left alone.

    `before` is the record of the sandbox as it went in. With the
    driver's listing, a file listed with the permission bits, size and
    mtime (to the nanosecond) it went in with is taken to be unchanged,
    as `make` would take it, and is not sent back; everything else is
    asked for, every folder included (alone). Returns the stream to read
    and the states of the files left alone; without a listing, all the
    files and an empty dict.
    """
    listing = done.listing
    if listing is None:
        return done.files, {}
    same = {}
    for name, entry in listing.items():
        state = before.get(name)
        if state is not None and state.kind == entry.kind == "file" and (
                state.mode, state.size, state.mtime_ns) == (
                entry.mode, entry.size, entry.mtime_ns):
            same[name] = state
    return done.fetch(name for name in listing if name not in same), same


def merged_sandbox(same: Mapping[str, FileState],
                   fetched: Mapping[str, FileState],
                   limits: Limits) -> dict[str, FileState]:
    """The sandbox after a run: the files it left alone, and those read.

    Raises UnsafeMemberError when a file left alone is not in a folder
    that came back (the listing and the files disagree), and
    LimitExceededError when the whole passes `limits`.
    """
    after = {**same, **fetched}
    for name in same.keys() - fetched.keys():
        folder = name.rpartition("/")[0]
        if folder and getattr(after.get(folder), "kind", "") != "directory":
            raise UnsafeMemberError(name, "its folder did not come back")
    if len(after) > limits.max_members:
        raise LimitExceededError("(the sandbox)", "max_members", len(after),
                                 limits.max_members)
    total = sum(state.size for state in after.values()
                if state.kind == "file")
    if total > limits.max_total_bytes:
        raise LimitExceededError("(the sandbox)", "max_total_bytes", total,
                                 limits.max_total_bytes)
    return after


class Runner:
    """What every runner shares: its Docker client, closing, `with`.

    A runner given no client makes one from the environment, and closes
    it when it is closed; a client given is the caller's to close.
    """

    def __init__(self, client: docker.DockerClient | None) -> None:
        self._own_client = client is None
        self.client = client if client is not None else docker.from_env()

    def close(self) -> None:
        """Close the Docker client if this runner made it."""
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class KataLocks:
    """Serializes the runs of one kata in this process; others run freely."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, kata_id: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(kata_id, threading.Lock())
        with lock:
            yield
