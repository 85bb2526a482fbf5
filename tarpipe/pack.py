"""Tar streams built from a directory tree or from in-memory files.

Both builders are deterministic: the bytes depend on the arguments and on
the names, bytes, permission bits and mtimes of the files, never on the
clock, the host's users or the order in which a file system lists a
directory.  Members come depth first, the entries of each directory
sorted by the bytes of their names (GNU tar's `--sort=name` order), each
directory just before its contents.  Every header carries the exact
nanosecond mtime in a PAX record.

The archive is produced lazily, one member at a time, as the returned
`TarStream` is read, so errors about members (a symlink, a FIFO, a file
that changed while it was read) surface while reading it.  The stream then
stops before the end-of-archive blocks: no reader can mistake what it got
for a whole archive.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Generator, Iterator, Mapping
from typing import Final

from ._header import Kind, fits_time_t, member_header, padding
from ._stream import TarStream
from .errors import LimitExceededError, TarPipeError, UnsafeMemberError
from .filediff import FileState
from .limits import Limits
from .owner import NOBODY, Owner

__all__ = ["pack_dir", "pack_directories", "pack_files"]

Chunks = Generator[bytes, None, None]
Record = dict[str, FileState]

# O_NOFOLLOW: a path swapped for a symlink mid-walk is not followed out of
# the tree.  O_NONBLOCK: a file swapped for a FIFO does not hang the open.
_FILE_FLAGS: Final = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                      | os.O_NOCTTY | os.O_CLOEXEC)
_DIR_FLAGS: Final = (os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                     | os.O_CLOEXEC)
# Header, data and padding of a file this small go out as one chunk:
# fewer, larger chunks cost a reader less per byte.
_JOIN_LIMIT: Final = 64 * 1024
_NAME_LIMITS: Final = Limits()
_SCRIPT_MODE: Final = 0o755


def pack_dir(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    *,
    owner: Owner = NOBODY,
    symlinks: bool = False,
    mtime_ns: int | None = None,
    record: Record | None = None,
    chunk_size: int = 64 * 1024,
) -> TarStream:
    """Stream the tree under `path` (not `path` itself) as a tar archive.

    Members are relative paths (`a/b.c`, directories `a/`).  Regular
    files and directories are packed; symbolic links only when
    `symlinks` is true, otherwise they raise `UnsafeMemberError` (rule
    "symlink not allowed"), as does any FIFO, socket or device (rule
    "special file not allowed").  Nothing is followed out of the tree.

    Each member gets its permission bits (`& 0o777`: setuid, setgid and
    sticky are dropped), its `st_mtime_ns` exactly, or `mtime_ns` when
    given, and `owner` in place of the file's real ids.  Files are read
    `chunk_size` bytes at a time; a file whose size or mtime changes
    while it is read raises `TarPipeError` naming it.  Hard links are
    packed as separate regular files.

    When `record` is given it is filled, as the stream is read, with a
    `FileState` for every member (SHA-256 of each file's bytes).
    """
    if mtime_ns is not None:
        _check_mtime(mtime_ns)
    root = os.fsencode(path)
    if not stat.S_ISDIR(os.stat(root).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, not {chunk_size!r}")
    packer = _TreePacker(owner, symlinks, mtime_ns, record, chunk_size)
    return TarStream(packer.archive(root))


class _TreePacker:
    """The settings of one `pack_dir` call and the walk that uses them."""

    def __init__(self, owner: Owner, symlinks: bool, mtime_ns: int | None,
                 record: Record | None, chunk_size: int) -> None:
        self.owner = owner
        self.symlinks = symlinks
        self.mtime_ns = mtime_ns
        self.record = record
        self.chunk_size = chunk_size

    def archive(self, root: bytes) -> Chunks:
        """Walk depth first, opening each directory relative to its parent.

        Holding one open directory per level (not re-resolving paths)
        keeps the walk inside the tree even while the tree changes.
        """
        fds: list[int] = []
        try:
            fds.append(os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW))
            levels = [("", _listing(fds[-1]))]
            while levels:
                prefix, entries = levels[-1]
                entry = next(entries, None)
                if entry is None:
                    levels.pop()
                    os.close(fds.pop())
                    continue
                member = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    fds.append(os.open(entry.name, _DIR_FLAGS, dir_fd=fds[-1]))
                    yield self._directory(fds[-1], member)
                    levels.append((member + "/", _listing(fds[-1])))
                else:
                    yield from self._leaf(fds[-1], entry, member)
        finally:
            for fd in fds:
                os.close(fd)

    def _directory(self, fd: int, member: str) -> bytes:
        info = os.fstat(fd)
        mode, mtime_ns = info.st_mode & 0o777, self._mtime(info)
        self._note(member, FileState("directory", mode, "", 0, mtime_ns))
        return self._header(member + "/", Kind.DIRECTORY, mode, mtime_ns)

    def _leaf(self, dir_fd: int, entry: os.DirEntry[str],
              member: str) -> Chunks:
        if entry.is_file(follow_symlinks=False):
            yield from self._file(dir_fd, entry.name, member)
        elif entry.is_symlink():
            yield self._symlink(dir_fd, entry, member)
        else:
            info = entry.stat(follow_symlinks=False)
            raise _special_file(member, info.st_mode)

    def _symlink(self, dir_fd: int, entry: os.DirEntry[str],
                 member: str) -> bytes:
        if not self.symlinks:
            raise UnsafeMemberError(member, "symlink not allowed")
        info = entry.stat(follow_symlinks=False)
        target = os.readlink(entry.name, dir_fd=dir_fd)
        mode, mtime_ns = info.st_mode & 0o777, self._mtime(info)
        self._note(member, FileState("symlink", mode, target, 0, mtime_ns))
        return self._header(member, Kind.SYMLINK, mode, mtime_ns,
                            linkname=target)

    def _file(self, dir_fd: int, name: str, member: str) -> Chunks:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise _special_file(member, before.st_mode)
            yield from self._file_chunks(fd, before, member)
        finally:
            os.close(fd)

    def _file_chunks(self, fd: int, before: os.stat_result,
                     member: str) -> Chunks:
        size, mode = before.st_size, before.st_mode & 0o777
        mtime_ns = self._mtime(before)
        header = self._header(member, Kind.FILE, mode, mtime_ns, size=size)
        digest = hashlib.sha256()
        # Hashing adds over a tenth to packing: pay it only for a record.
        update = digest.update if self.record is not None else _ignore
        if size <= self.chunk_size:
            data = _read_exactly(fd, size, member)
            _check_unchanged(fd, before, member)
            update(data)
            yield header + data + padding(size)
        else:
            yield header
            for data in _read_chunks(fd, size, self.chunk_size, member):
                update(data)
                yield data
            _check_unchanged(fd, before, member)
            yield padding(size)
        self._note(member, FileState("file", mode, digest.hexdigest(),
                                     size, mtime_ns))

    def _header(self, member: str, kind: Kind, mode: int, mtime_ns: int,
                *, size: int = 0, linkname: str = "") -> bytes:
        return member_header(member, kind, mode=mode, mtime_ns=mtime_ns,
                             owner=self.owner, size=size, linkname=linkname)

    def _mtime(self, info: os.stat_result) -> int:
        return info.st_mtime_ns if self.mtime_ns is None else self.mtime_ns

    def _note(self, member: str, state: FileState) -> None:
        if self.record is not None:
            self.record[member] = state


def _ignore(data: bytes) -> None:
    pass


def _listing(dir_fd: int) -> Iterator[os.DirEntry[str]]:
    with os.scandir(dir_fd) as entries:
        return iter(sorted(entries, key=lambda e: os.fsencode(e.name)))


def _read_exactly(fd: int, size: int, member: str) -> bytes:
    data = os.read(fd, size)
    if len(data) == size:
        return data
    return b"".join(_read_chunks(fd, size, size, member, first=data))


def _read_chunks(fd: int, size: int, chunk_size: int, member: str,
                 first: bytes = b"") -> Iterator[bytes]:
    if first:
        yield first
    remaining = size - len(first)
    while remaining:
        data = os.read(fd, min(chunk_size, remaining))
        if not data:
            raise _changed(member, f"shrank below {size} bytes")
        remaining -= len(data)
        yield data


def _check_unchanged(fd: int, before: os.stat_result, member: str) -> None:
    # A changed size would misframe every later member; a changed mtime
    # means the bytes sent may mix old and new content.  (A rewrite within
    # one tick of the file system's clock keeps its mtime and goes unseen.)
    after = os.fstat(fd)
    if after.st_size != before.st_size:
        raise _changed(member, f"size {before.st_size} -> {after.st_size}")
    if after.st_mtime_ns != before.st_mtime_ns:
        raise _changed(member, "mtime moved")


def _changed(member: str, detail: str) -> TarPipeError:
    return TarPipeError(f"file {member!r} changed while being packed "
                        f"({detail}); pack again once it is quiet")


def _special_file(member: str, mode: int) -> UnsafeMemberError:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    kind = next((name for test, name in kinds if test(mode)), "unknown kind")
    return UnsafeMemberError(member, "special file not allowed", kind)


def pack_files(
    files: Mapping[str, bytes | str],
    *,
    mtime_ns: int,
    owner: Owner = NOBODY,
    mode: int = 0o644,
    dir_mode: int = 0o755,
    modes: Mapping[str, int] | None = None,
    record: Record | None = None,
) -> TarStream:
    """Stream in-memory files, e.g. a browser's visible files, as tar.

    `files` maps relative paths (`/` separators) to contents; a str is
    encoded as UTF-8.  Every member gets `mtime_ns` (time is an input:
    there is no default from the clock) and `owner`.  Files get `mode`,
    except that a name ending `.sh` (so `cyber-dojo.sh`) gets 0o755;
    `modes` overrides either, per file.  Each parent directory is written
    as a member, with `dir_mode`, before its contents.

    Names and contents are checked before anything is returned: a bad
    name raises `UnsafeMemberError` naming it and the rule it breaks
    (empty, absolute, a `.`, `..` or empty component, NUL, a trailing
    slash, over 4096 bytes or a component over 255, or a file that is
    also the parent directory of another); a content neither bytes nor
    str raises `TypeError`.  `record`, when given, is filled as the
    stream is read.
    """
    _check_mtime(mtime_ns)
    contents = {_checked_name(name): _content(name, value)
                for name, value in files.items()}
    directories = _parent_directories(contents)
    file_modes = _file_modes(contents, mode, modes or {})
    _check_mode("dir_mode", dir_mode)

    def chunks() -> Chunks:
        for member in sorted(contents.keys() | directories, key=_sort_key):
            if member in directories:
                state = FileState("directory", dir_mode, "", 0, mtime_ns)
                yield header(member + "/", Kind.DIRECTORY, state)
            else:
                data = contents[member]
                state = FileState("file", file_modes[member],
                                  hashlib.sha256(data).hexdigest(),
                                  len(data), mtime_ns)
                yield from _framed(header(member, Kind.FILE, state), data)
            if record is not None:
                record[member] = state

    def header(member: str, kind: Kind, state: FileState) -> bytes:
        return member_header(member, kind, mode=state.mode, mtime_ns=mtime_ns,
                             owner=owner, size=state.size)

    return TarStream(chunks())


def pack_directories(
    record: Mapping[str, FileState],
    *,
    owner: Owner = NOBODY,
    prefix: str = "",
) -> TarStream:
    """Stream the folders of `record` alone, with their modes and mtimes.

    Unpacked over a tree that already has them, it puts back what later
    changes inside them (a file removed, a link made) did to their
    mtimes.  Names get `prefix` in front, as with `retar`.
    """
    folders = sorted((name for name, state in record.items()
                      if state.kind == "directory"), key=_sort_key)

    def chunks() -> Chunks:
        for name in folders:
            state = record[name]
            yield member_header(prefix + name + "/", Kind.DIRECTORY,
                                mode=state.mode, mtime_ns=state.mtime_ns,
                                owner=owner, size=0)

    return TarStream(chunks())


def _checked_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"file name {name!r} is not a str")
    rule = _broken_rule(name)
    if rule:
        raise UnsafeMemberError(name, rule)
    encoded = name.encode("utf-8", "surrogateescape")
    _check_length(name, "max_path_bytes", len(encoded))
    for part in encoded.split(b"/"):
        _check_length(name, "max_name_bytes", len(part))
    return name


def _broken_rule(name: str) -> str:
    """The name rule `name` breaks, or "" when it breaks none."""
    if not name:
        return "empty name"
    if "\0" in name:
        return "NUL in name"
    if name.startswith("/"):
        return "absolute path"
    if name.endswith("/"):
        return "trailing slash"
    try:
        name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "name not encodable"
    parts = name.split("/")
    for part, rule in (("", "empty component"), (".", "'.' component"),
                       ("..", "'..' component")):
        if part in parts:
            return rule
    return ""


def _check_length(name: str, limit: str, value: int) -> None:
    allowed: int = getattr(_NAME_LIMITS, limit)
    if value > allowed:
        raise LimitExceededError(name, limit, value, allowed)


def _content(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"file {name!r}: content is not valid "
                             f"Unicode ({error.reason})") from None
    raise TypeError(f"file {name!r}: content must be bytes or str, "
                    f"not {type(value).__name__}")


def _parent_directories(contents: Mapping[str, bytes]) -> set[str]:
    directories = {name[:i] for name in contents
                   for i, char in enumerate(name) if char == "/"}
    clashes = sorted(directories & contents.keys(), key=_sort_key)
    if clashes:
        raise UnsafeMemberError(clashes[0], "file is also a directory")
    return directories


def _file_modes(contents: Mapping[str, bytes], mode: int,
                modes: Mapping[str, int]) -> dict[str, int]:
    _check_mode("mode", mode)
    unknown = sorted(modes.keys() - contents.keys())
    if unknown:
        raise ValueError(f"modes names files not in files: {unknown!r}")
    for name, value in modes.items():
        _check_mode(f"modes[{name!r}]", value)
    return {name: modes.get(name, _default_mode(name, mode))
            for name in contents}


def _default_mode(name: str, mode: int) -> int:
    return _SCRIPT_MODE if name.endswith(".sh") else mode


def _check_mode(what: str, value: int) -> None:
    _check_int(what, value)
    if not 0 <= value <= 0o777:
        raise ValueError(f"{what} must be permission bits in 0..0o777, "
                         f"not {value:#o}")


def _check_int(what: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {value!r}")


def _check_mtime(value: object) -> None:
    _check_int("mtime_ns", value)
    if isinstance(value, int) and not fits_time_t(value):
        raise ValueError(f"mtime_ns {value} is outside a 64-bit time_t: "
                         "no file can have it")


def _sort_key(member: str) -> list[bytes]:
    # Component by component, so `a/x` sorts right after `a` and before
    # `a-b`: the same order as a walk of the tree written out to disk.
    return member.encode("utf-8", "surrogateescape").split(b"/")


def _framed(header: bytes, data: bytes) -> Iterator[bytes]:
    if len(data) <= _JOIN_LIMIT:
        yield header + data + padding(len(data))
    else:
        yield header
        yield data
        yield padding(len(data))
