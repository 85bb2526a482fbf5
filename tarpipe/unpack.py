"""Apply a tar stream to a directory, one member at a time.

Every member passes the rules of `tarpipe._checks` before anything is
written for it.  The destination is then reached only through open
directory descriptors, each opened with O_NOFOLLOW, so a symlink already
in the destination is never written through, whatever a name says.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Final, TypeVar

from . import swap
from ._checks import CheckContext, check_member, member_kind
from ._header import mtime_ns_of
from ._reader import Source, TarReader
from .errors import UnsafeMemberError
from .filediff import FileState
from .limits import Limits
from .owner import Owner

__all__ = ["unpack_into"]

Record = dict[str, FileState]
Ids = tuple[int, int]
T = TypeVar("T")

_DEFAULT_LIMITS: Final = Limits()
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS: Final = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC)


def unpack_into(
    stream: Source,
    dest: str | os.PathLike[str],
    *,
    owner: Owner | None = None,
    limits: Limits = _DEFAULT_LIMITS,
    replace: bool = False,
    allow_links: bool = False,
    record: Record | None = None,
) -> Record:
    """Write the members of tar `stream` under `dest`; return the record.

    `stream` is an iterable of bytes chunks (a `TarStream`, a generator)
    or a binary file object; it is read once, member by member.  Files
    are written in chunks, with their exact nanosecond mtimes (from PAX
    records) and their permission bits (setuid, setgid and sticky
    cleared); each directory gets its mode and mtime once all of its
    contents are written.  Files are owned by `owner` when given and the
    process runs as root, by the caller otherwise: never by the ids in
    the archive.

    Without `replace` the members go into `dest` (made if missing),
    replacing files of the same names; an error stops the unpacking with
    what was written so far left in place.  With `replace` the tree is
    built beside `dest` and swapped in atomically (`tarpipe.swap`): on
    any error `dest` is untouched.  `dest` is resolved first, so when it
    is a symlink its target is what changes.

    The record maps each member's path to its `FileState` (the SHA-256 of
    each file computed while writing).  `record`, when given, is filled
    and returned; with `replace` only once the swap is done.

    Raises `UnsafeMemberError` (or `LimitExceededError`) naming a member
    and the rule it breaks, `ArchiveError` for a truncated or corrupt
    stream, `SwapError` when the swap cannot be done.
    """
    reader = TarReader(stream, limits)
    target = os.path.realpath(dest)
    context = CheckContext(limits, allow_links)
    if replace:
        written = _replace(reader, target, owner, context)
        if record is None:
            return written
        record.update(written)
        return record
    os.makedirs(target, exist_ok=True)
    written = {} if record is None else record
    _apply(reader, target, owner, context, written)
    return written


def _replace(reader: TarReader, target: str, owner: Owner | None,
             context: CheckContext) -> Record:
    """Build the tree beside `target`, then swap it in."""
    if os.path.lexists(target) and not os.path.isdir(target):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    written: Record = {}
    with swap.replacing(target) as staging:
        mode, ids = _root_attributes(target, staging, owner)
        _apply(reader, staging, owner, context, written)
        _set_root(staging, mode, ids)
    return written


def _root_attributes(old: str, staging: str,
                     owner: Owner | None) -> tuple[int, Ids | None]:
    """The mode (and, as root, ids) the top of the new tree is to get.

    Those of the old tree; for a destination made afresh, what
    `os.mkdir` gives, and `owner`.  Asked before anything is written
    into `staging`, applied once everything is.
    """
    try:
        info = os.stat(old)
    except FileNotFoundError:
        probe = os.path.join(staging, "probe")
        os.mkdir(probe, 0o777)
        mode = stat.S_IMODE(os.stat(probe).st_mode)
        os.rmdir(probe)
        return mode, _ids(owner)
    ids = (info.st_uid, info.st_gid) if os.geteuid() == 0 else None
    return stat.S_IMODE(info.st_mode), ids


def _set_root(path: str, mode: int, ids: Ids | None) -> None:
    if ids is not None:
        os.chown(path, *ids)
    os.chmod(path, mode)


def _ids(owner: Owner | None) -> Ids | None:
    """The ids to give what is written: only root may give any."""
    if owner is None or os.geteuid() != 0:
        return None
    return owner.uid, owner.gid


def _apply(reader: TarReader, root: str, owner: Owner | None,
           context: CheckContext, record: Record) -> None:
    with _Tree(root, _ids(owner)) as tree:
        for member in reader:
            checked = check_member(member, context)
            if checked is not None:
                record[checked.name] = _write(tree, reader, checked)
        tree.finish()


def _write(tree: _Tree, reader: TarReader,
           member: tarfile.TarInfo) -> FileState:
    kind, mtime_ns = member_kind(member), mtime_ns_of(member)
    name, mode = member.name, member.mode
    if kind == "file":
        digest = tree.file(name, mode, mtime_ns, reader.chunks(member))
        return FileState(kind, mode, digest, member.size, mtime_ns)
    if kind == "directory":
        tree.directory(name, mode, mtime_ns)
        return FileState(kind, mode, "", 0, mtime_ns)
    _stdlib_check(member, tree.root)
    if kind == "symlink":
        tree.symlink(name, member.linkname, mtime_ns)
    else:
        tree.hardlink(name, member.linkname)
    return FileState(kind, mode, member.linkname, 0, mtime_ns)


def _stdlib_check(member: tarfile.TarInfo, root: str) -> None:
    """Also apply `tarfile`'s "data" filter to a link.

    Unlike the name-only rules it resolves the link's target through
    what is on disk, e.g. a symlink the destination held before.
    """
    try:
        tarfile.data_filter(member, root)
    except tarfile.FilterError as error:
        raise UnsafeMemberError(
            member.name, "refused by tarfile.data_filter",
            f"{type(error).__name__}: {error}") from None


class _Tree:
    """A destination directory, reached only through open descriptors.

    Directories on the way to a member are opened one component at a
    time with O_NOFOLLOW, made when missing; the last one opened is kept
    for the next member, which is usually its neighbour.
    """

    def __init__(self, root: str, ids: Ids | None) -> None:
        self.root = root
        self._ids = ids
        self._root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        self._parent: tuple[str, int] | None = None
        self._directories: list[tuple[str, int, int]] = []

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, kind: type[BaseException] | None,
                 error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
        os.close(self._root_fd)

    def file(self, name: str, mode: int, mtime_ns: int,
             chunks: Iterable[bytes]) -> str:
        """Write a regular file; return the SHA-256 of its bytes."""
        dir_fd, leaf = self._parent_of(name)
        fd = self._create(dir_fd, leaf, name, "file", lambda: os.open(
            leaf, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd))
        try:
            digest = _write_chunks(fd, chunks)
            self._set_attributes(fd, mode, mtime_ns)
        finally:
            os.close(fd)
        return digest

    def directory(self, name: str, mode: int, mtime_ns: int) -> None:
        """Make a directory; its mode and mtime wait for `finish`."""
        dir_fd, leaf = self._parent_of(name)
        try:
            os.mkdir(leaf, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            info = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode):
                os.unlink(leaf, dir_fd=dir_fd)
                os.mkdir(leaf, 0o700, dir_fd=dir_fd)
            elif info.st_mode & 0o700 != 0o700:
                # A directory an earlier archive made read-only: open it up
                # to its owner until `finish` gives it its mode again.
                # (It was just seen to be no symlink; a 0o000 directory
                # cannot be opened to use fchmod.)
                os.chmod(leaf, stat.S_IMODE(info.st_mode) | 0o700,
                         dir_fd=dir_fd)
        self._directories.append((name, mode, mtime_ns))

    def symlink(self, name: str, target: str, mtime_ns: int) -> None:
        """Make a symbolic link, which is never followed here."""
        dir_fd, leaf = self._parent_of(name)
        self._create(dir_fd, leaf, name, "symlink", lambda: os.symlink(
            target, leaf, dir_fd=dir_fd))
        if self._ids is not None:
            os.chown(leaf, *self._ids, dir_fd=dir_fd, follow_symlinks=False)
        os.utime(leaf, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd,
                 follow_symlinks=False)

    def hardlink(self, name: str, target: str) -> None:
        """Link to `target`, a file written before (its inode's mtime)."""
        head, _, target_leaf = target.rpartition("/")
        source_fd = self._open_dir(head, name, create=False)
        try:
            dir_fd, leaf = self._parent_of(name)
            self._create(dir_fd, leaf, name, "hard link", lambda: os.link(
                target_leaf, leaf, src_dir_fd=source_fd, dst_dir_fd=dir_fd,
                follow_symlinks=False))
        finally:
            os.close(source_fd)

    def finish(self) -> None:
        """Set the directories' modes and mtimes, deepest first.

        Nothing is written into a directory after this, so its mtime
        stays as the archive says.
        """
        deepest_first = sorted(self._directories, reverse=True,
                               key=lambda entry: entry[0].count("/"))
        for name, mode, mtime_ns in deepest_first:
            fd = self._open_dir(name, name, create=False)
            try:
                self._set_attributes(fd, mode, mtime_ns)
            finally:
                os.close(fd)

    def _set_attributes(self, fd: int, mode: int, mtime_ns: int) -> None:
        if self._ids is not None:
            os.fchown(fd, *self._ids)
        os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))

    def _create(self, dir_fd: int, leaf: str, member: str, kind: str,
                make: Callable[[], T]) -> T:
        """`make()`, after removing a non-directory that holds the name."""
        try:
            return make()
        except FileExistsError:
            info = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                raise UnsafeMemberError(member, f"{kind} replaces a "
                                        "directory", "in the destination"
                                        ) from None
            os.unlink(leaf, dir_fd=dir_fd)
            return make()

    def _parent_of(self, name: str) -> tuple[int, str]:
        head, _, leaf = name.rpartition("/")
        if self._parent is None or self._parent[0] != head:
            fd = self._open_dir(head, name, create=True)
            if self._parent is not None:
                os.close(self._parent[1])
            self._parent = (head, fd)
        return self._parent[1], leaf

    def _open_dir(self, path: str, member: str, *, create: bool) -> int:
        """An open descriptor of directory `path`, never via a symlink."""
        fd = os.dup(self._root_fd)
        done: list[str] = []
        try:
            for part in path.split("/") if path else []:
                next_fd = self._open_child(fd, part, member, done, create)
                os.close(fd)
                fd = next_fd
                done.append(part)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_child(self, fd: int, part: str, member: str,
                    done: list[str], create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise _blocked(fd, part, member, "/".join([*done, part])) from None
        os.mkdir(part, 0o777, dir_fd=fd)
        if self._ids is not None:
            os.chown(part, *self._ids, dir_fd=fd, follow_symlinks=False)
        return os.open(part, _DIR_FLAGS, dir_fd=fd)


def _blocked(dir_fd: int, part: str, member: str,
             path: str) -> UnsafeMemberError:
    info = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
    what = "symlink" if stat.S_ISLNK(info.st_mode) else "file"
    return UnsafeMemberError(member, f"path passes through a {what}",
                             f"{path!r} in the destination")


def _write_chunks(fd: int, chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
    return digest.hexdigest()
