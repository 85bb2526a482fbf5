"""The katas-volume runner: the kata's own sandbox folder, bind-mounted.

Layout under the katas root, one folder a kata::

    KATAS_ROOT/KATA_ID/sandbox/       bind-mounted at /sandbox, run in place
    KATAS_ROOT/KATA_ID/history.git/   one commit of the visible files a run
    KATAS_ROOT/KATA_ID/lock           serializes runs across processes

Only the kata's sandbox folder is mounted, never the katas root.  The run
is not atomic: a run that times out leaves whatever it wrote, because the
container wrote straight into the folder (the data-container runner is
the atomic one).  Nor is the folder's size bounded, as a tmpfs sandbox's
is: a run can write up to its file size limit a file (disk quotas on the
katas root would bound it).  The script runs under the warm containers'
driver (`runners.warm`), so its output is capped inside the container
and whatever it left running is killed when it ends.  After each run
FIFOs, sockets and devices are removed from the folder (and reported in
`RunResult.rejected`) and setuid, setgid and sticky bits cleared.

Inside the container the files belong to `nobody`; before and after the
run they belong to the outside owner, which needs this process to be
root (it changes owners).  Without root the container runs as this
process's own user instead, and the files never change hands.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import docker

from tarpipe import NOBODY, Owner, pack_dir, pack_files, unpack_into
from tarpipe.filediff import FileState, diff

from ._base import (
    Clock,
    KataLocks,
    Runner,
    RunResult,
    check_kata_id,
    check_request,
    run_message,
)
from .container import ContainerLimits
from .history import HistoryEntry, HostHistory
from .images import require_image
from .warm import WarmContainer

__all__ = ["KatasVolumeRunner"]

log = logging.getLogger(__name__)


class KatasVolumeRunner(Runner):
    """Runs each kata in place, in its folder under `katas_root`."""

    def __init__(
        self,
        katas_root: str | os.PathLike[str],
        client: docker.DockerClient | None = None,
        owner: Owner | None = None,
        *,
        limits: ContainerLimits = ContainerLimits(),
        clock: Clock = time.time_ns,
    ) -> None:
        self.katas_root = Path(katas_root).resolve()
        self.katas_root.mkdir(parents=True, exist_ok=True)
        super().__init__(client)
        self.owner = owner if owner is not None else Owner.current()
        self.limits = limits
        #: nanoseconds now: the mtime given to visible files written
        self.clock = clock
        self._locks = KataLocks()

    def run(
        self,
        kata_id: str,
        image: str,
        files: Mapping[str, bytes | str],
        *,
        max_seconds: float = 10,
    ) -> RunResult:
        """Write the changed visible files, run, commit; see the module."""
        visible = check_request(kata_id, files, max_seconds)
        # Asked here, unlike the other runners (whose pool finds a missing
        # image out): the visible files are written before the container
        # is made, and a missing image must leave the kata as it was.
        require_image(self.client, image)
        with self._locks.hold(kata_id), self._file_lock(kata_id):
            return self._run(kata_id, image, visible, max_seconds)

    def history(self, kata_id: str) -> list[HistoryEntry]:
        """The kata's runs, oldest first, each with its visible files."""
        check_kata_id(kata_id)
        path = self._kata(kata_id) / "history.git"
        return HostHistory(path).entries() if path.exists() else []

    def snapshot(self, kata_id: str) -> dict[str, FileState]:
        """Every file of the kata's sandbox now, with digest and mtime."""
        check_kata_id(kata_id)
        sandbox = self._kata(kata_id) / "sandbox"
        return _record(sandbox) if sandbox.is_dir() else {}

    def _run(self, kata_id: str, image: str, visible: dict[str, bytes],
             max_seconds: float) -> RunResult:
        sandbox = self._kata(kata_id) / "sandbox"
        sandbox.mkdir(parents=True, exist_ok=True)
        history = HostHistory(self._kata(kata_id) / "history.git")
        latest = history.latest()
        self._write_visible(sandbox, visible, latest)

        before = _record(sandbox)
        with (self._lent_to_container(sandbox) as (user, removed),
              WarmContainer(self.client, image, limits=self.limits, user=user,
                            sandbox_dir=str(sandbox)) as box,
              box.run(pack_files({}, mtime_ns=0),
                      max_seconds=max_seconds) as done):
            # The files are in place already: the run's copy is not read.
            run, failure = done.result, done.failure
        after = _record(sandbox)

        history.commit(visible, run_message(run), commit_time=self.clock()
                       // 1_000_000_000, executable=_scripts(visible))
        log.debug("katas-volume run of %s: status %s in %.3f s",
                  kata_id, run.status, run.duration)
        rejected = failure or (f"special file not allowed: removed {removed}"
                               if removed else "")
        return RunResult.of(run, diff(before, after), rejected=rejected)

    def _write_visible(self, sandbox: Path, visible: dict[str, bytes],
                       latest: HistoryEntry | None) -> None:
        """Only new and changed files are written: the rest keep their mtime."""
        changed = {name: content for name, content in visible.items()
                   if _content_of(sandbox, name) != content}
        if changed:
            unpack_into(pack_files(changed, mtime_ns=self.clock(),
                                   owner=self.owner), sandbox, owner=self.owner)
        gone = set(latest.files) - set(visible) if latest else set()
        for name in sorted(gone):
            _remove_file(sandbox, name)

    @contextmanager
    def _lent_to_container(
        self, sandbox: Path
    ) -> Iterator[tuple[str, list[str]]]:
        """The user to run as, and the special files the run left.

        As root, the sandbox belongs to nobody while the container has
        it, and to the outside owner again after; otherwise the container
        runs as this process's user.  Either way, after the run (and
        before, after a crash) the tree is tidied: no FIFO, socket or
        device stays, and no setuid, setgid or sticky bit.
        """
        removed: list[str] = []
        if os.geteuid() != 0:
            _tidy(sandbox, None)
            try:
                yield f"{os.geteuid()}:{os.getegid()}", removed
            finally:
                removed += _tidy(sandbox, None)
            return
        _tidy(sandbox, NOBODY)
        try:
            yield f"{NOBODY.uid}:{NOBODY.gid}", removed
        finally:
            removed += _tidy(sandbox, self.owner)

    @contextmanager
    def _file_lock(self, kata_id: str) -> Iterator[None]:
        kata = self._kata(kata_id)
        kata.mkdir(parents=True, exist_ok=True)
        fd = os.open(kata / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _kata(self, kata_id: str) -> Path:
        return self.katas_root / kata_id



def _scripts(visible: Mapping[str, bytes]) -> list[str]:
    return [name for name in visible if name.endswith(".sh")]


def _record(sandbox: Path) -> dict[str, FileState]:
    record: dict[str, FileState] = {}
    for _ in pack_dir(sandbox, symlinks=True, record=record):
        pass  # the record, filled as the tree is read, is what is wanted
    return record


def _content_of(sandbox: Path, name: str) -> bytes | None:
    """A visible file's bytes in the sandbox, None if it is not a file there.

    Each parent is opened without following links, so a link the last run
    left in the sandbox cannot point this read outside it.
    """
    *parents, leaf = name.split("/")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds = [os.open(sandbox, flags | os.O_DIRECTORY)]
    try:
        for part in parents:
            fds.append(os.open(part, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
        fd = os.open(leaf, flags | os.O_NONBLOCK, dir_fd=fds[-1])
    except OSError:
        return None
    finally:
        for dir_fd in fds:
            os.close(dir_fd)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return None
        return file.read()


def _remove_file(sandbox: Path, name: str) -> None:
    """Delete a visible file the caller dropped, never through a link."""
    *parents, leaf = name.split("/")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    fds = [os.open(sandbox, flags)]
    try:
        for part in parents:
            fds.append(os.open(part, flags, dir_fd=fds[-1]))
        os.unlink(leaf, dir_fd=fds[-1])
    except (FileNotFoundError, NotADirectoryError):
        pass
    finally:
        for dir_fd in fds:
            os.close(dir_fd)


def _tidy(root: Path, owner: Owner | None) -> list[str]:
    """Special files out, special mode bits off, `owner` on (if given).

    Returns the paths removed.  The container is gone by now, so nothing
    changes the tree meanwhile; links are never followed.
    """
    removed = []
    if owner is not None:
        os.chown(root, owner.uid, owner.gid)
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)
                    or stat.S_ISLNK(info.st_mode)):
                os.unlink(path)
                removed.append(os.path.relpath(path, root))
                continue
            if owner is not None:
                os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o7000:
                os.chmod(path, stat.S_IMODE(info.st_mode) & 0o777)
    return sorted(removed)
