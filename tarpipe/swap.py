"""Replace a directory tree by another in one atomic step.

A new tree is built in a *staging* directory beside its destination, named
`.<dest name>.tarpipe-<kind>-<random>`, then `exchange` swaps the two names
with Linux's `renameat2(RENAME_EXCHANGE)`: whoever looks at the destination,
even after a SIGKILL at any moment, sees the whole old tree or the whole new
one.  After the swap the staging name holds the old tree, which is removed.

A process killed half way leaves its staging directory behind.  `replacing`
removes such leftovers when it starts, under a lock file beside the
destination (`.<dest name>.tarpipe.lock`): each call holds the lock shared
while it works, and only a call that can take it exclusively (no other call
on that destination is running) removes staging directories.  Leftovers
seen while others are busy wait for a quieter call.

No fallback is attempted where the file system refuses the exchange (an
old kernel, a file system without RENAME_EXCHANGE, a destination that is a
mount point): `SwapError` says so.  Flipping a symlink instead would turn
the destination into a symlink behind the caller's back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import platform
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator

from .errors import SwapError

__all__ = [
    "clean_leftovers", "exchange", "remove_tree", "replacing", "staging_dir",
]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# renameat2's number where the C library lacks a wrapper (glibc < 2.28).
_SYSCALL_NUMBERS = {
    "x86_64": 316, "i386": 353, "i686": 353, "aarch64": 276,
    "armv7l": 382, "armv6l": 382, "riscv64": 276, "loongarch64": 276,
    "ppc64le": 357, "ppc64": 357, "s390x": 347,
}

Renamer = Callable[[bytes, bytes, int], int]


def exchange(new_dir: str, dest: str) -> bool:
    """Put `new_dir` at `dest` atomically.

    When `dest` exists the two are exchanged and True is returned: the
    old tree is then at `new_dir`, for the caller to remove.  Otherwise
    `new_dir` is simply renamed to `dest` and False is returned.  Raises
    `SwapError` when the file system cannot exchange the two.
    """
    new, old = os.fsencode(new_dir), os.fsencode(dest)
    if not os.path.lexists(old):
        os.rename(new, old)
        return False
    renameat2 = _renameat2()
    if renameat2 is None:
        raise SwapError(f"cannot swap {new_dir!r} into {dest!r}: no "
                        f"renameat2 on {platform.machine()!r}")
    if renameat2(new, old, _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise SwapError(
            f"cannot swap {new_dir!r} into {dest!r}: {os.strerror(code)}"
            + _hint(code)) from OSError(code, os.strerror(code), dest)
    return True


def _hint(code: int) -> str:
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return " (the file system does not support RENAME_EXCHANGE)"
    if code in (errno.EXDEV, errno.EBUSY):
        return " (is the destination a mount point?)"
    return ""


@functools.cache
def _renameat2() -> Renamer | None:
    libc = ctypes.CDLL(None, use_errno=True)
    path, fd, flags = ctypes.c_char_p, ctypes.c_int, ctypes.c_uint
    try:
        function = libc.renameat2
    except AttributeError:
        return _renameat2_syscall(libc)
    function.argtypes = [fd, path, fd, path, flags]
    function.restype = ctypes.c_int

    def rename(old: bytes, new: bytes, how: int) -> int:
        return int(function(_AT_FDCWD, old, _AT_FDCWD, new, how))
    return rename


def _renameat2_syscall(libc: ctypes.CDLL) -> Renamer | None:
    number = _SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                        ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def rename(old: bytes, new: bytes, how: int) -> int:
        return int(syscall(number, _AT_FDCWD, old, _AT_FDCWD, new, how))
    return rename


@contextlib.contextmanager
def replacing(dest: str) -> Iterator[str]:
    """A fresh staging directory that replaces `dest` when the block ends.

    On a normal exit the staging directory is swapped in (`exchange`)
    and the old tree removed; on any exception it is removed and `dest`
    is left as it was.  Leftovers of killed earlier calls are cleaned
    first when no other call on `dest` is running.
    """
    with _lock(dest):
        staging = staging_dir(dest, "new")
        try:
            yield staging
            swapped = exchange(staging, dest)
        except BaseException:
            remove_tree(staging)
            raise
        if swapped:
            remove_tree(staging)


def staging_dir(dest: str, kind: str) -> str:
    """A new empty directory beside `dest`, named as a staging one."""
    parent, name = os.path.split(os.path.abspath(dest))
    return tempfile.mkdtemp(prefix=f"{_prefix(name)}{kind}-", dir=parent)


def clean_leftovers(dest: str) -> list[str]:
    """Remove staging directories that killed calls left beside `dest`.

    Nothing is removed while another call on `dest` is running (their
    staging directories look the same); the paths removed are returned.
    """
    with _lock_file(dest) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        return _remove_leftovers(dest)


@contextlib.contextmanager
def _lock(dest: str) -> Iterator[None]:
    """Hold the lock beside `dest` shared, cleaning leftovers when alone."""
    with _lock_file(dest) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            _remove_leftovers(dest)
        # From exclusive (or nothing) to shared; our own staging directory
        # is only made after this, so no cleaner can mistake it.
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield


@contextlib.contextmanager
def _lock_file(dest: str) -> Iterator[int]:
    parent, name = os.path.split(os.path.abspath(dest))
    path = os.path.join(parent, f".{name}.tarpipe.lock")
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def _remove_leftovers(dest: str) -> list[str]:
    parent, name = os.path.split(os.path.abspath(dest))
    prefix = _prefix(name)
    removed = []
    with os.scandir(parent) as entries:
        for entry in entries:
            if (entry.name.startswith(prefix)
                    and entry.is_dir(follow_symlinks=False)):
                remove_tree(entry.path)
                removed.append(entry.path)
    return sorted(removed)


def _prefix(name: str) -> str:
    return f".{name}.tarpipe-"


def remove_tree(path: str) -> None:
    """Remove `path` and all below it, even where modes deny its owner.

    A missing `path` is not an error; symlinks are removed, not followed.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        # A directory the archive made read-only (or unsearchable) cannot
        # be emptied by an unprivileged owner until it is opened up again.
        _grant_owner_access(path)
        shutil.rmtree(path)


def _grant_owner_access(path: str) -> None:
    os.chmod(path, 0o700)
    for top, dirs, _ in os.walk(path):
        for name in dirs:
            child = os.path.join(top, name)
            if stat.S_ISDIR(os.lstat(child).st_mode):
                os.chmod(child, 0o700)
