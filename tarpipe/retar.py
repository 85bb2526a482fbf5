"""Check a tar stream and write it out again, without touching a disk.

`retar` lets an archive flow container -> memory -> container: every
member passes the same rules as `unpack_into`, and goes out with a header
of tarpipe's own making (exact nanosecond mtime, cleaned mode, the given
owner), its data passed through chunk by chunk.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Generator, Mapping
from typing import Final

from ._checks import CheckContext, check_member, member_kind
from ._header import Kind, member_header, mtime_ns_of, padding
from ._reader import CHUNK_SIZE, Source, TarReader
from ._stream import TarStream
from .filediff import FileState
from .limits import Limits
from .owner import Owner

__all__ = ["retar"]

Record = dict[str, FileState]

_DEFAULT_LIMITS: Final = Limits()
# The largest file held back until its digest says whether it changed.
_HELD_MOST: Final = 16 * 1024 * 1024
_HEADER_KINDS: Final = {
    "file": Kind.FILE, "directory": Kind.DIRECTORY,
    "symlink": Kind.SYMLINK, "hardlink": Kind.HARDLINK,
}


def retar(
    stream: Source,
    *,
    owner: Owner,
    limits: Limits = _DEFAULT_LIMITS,
    allow_links: bool = False,
    record: Record | None = None,
    prefix: str = "",
    already_there: Mapping[str, FileState] | None = None,
    left_out: set[str] | None = None,
) -> TarStream:
    """The members of tar `stream`, checked and re-written, as a stream.

    `stream` is read once, lazily, as the result is read (a consumed
    `TarStream` fails at once).  Each member must pass the rules of
    `unpack_into`; it goes out with its exact mtime, its cleaned mode
    and `owner`.  A refused member, a limit passed or a truncated input
    raises while the result is read, after the members before it, and
    the end-of-archive blocks are then never sent.  `record`, when
    given, is filled as members go out.

    `prefix`, a relative folder path ending in `/`, is put before every
    name (and every hard link's target) going out, so the tree lands in
    that folder of the reader's destination; the record keeps the names
    as they came in.

    `already_there` says what the reader has at hand (a record of a
    tree it can link or copy from, by name as it came in): a file or
    symbolic link whose state equals its entry there, mtime included,
    is checked and recorded but left out of the output, and so is a
    hard link to a member left out; their names are added to the set
    `left_out`.  A file's bytes are compared by digest, so one of up to
    16 MiB is held in memory until they are known; a bigger one always
    goes out, and so do folders.
    """
    _check_prefix(prefix)
    reader = TarReader(stream, limits)
    context = CheckContext(limits, allow_links)
    omit = _Omission(already_there or {},
                     left_out if left_out is not None else set())
    return TarStream(_retarred(reader, context, owner, record, prefix, omit))


def _check_prefix(prefix: str) -> None:
    parts = prefix.split("/")
    if prefix and (parts[-1] != "" or prefix.startswith("/")
                   or any(part in ("", ".", "..") for part in parts[:-1])):
        raise ValueError(f"prefix must be a relative folder path ending "
                         f"in '/', without '.' or '..', not {prefix!r}")


class _Omission:
    """What the reader has already, and what was left out for that."""

    def __init__(self, known: Mapping[str, FileState],
                 left_out: set[str]) -> None:
        self.known = known
        self.left_out = left_out

    def holds(self, member: tarfile.TarInfo) -> FileState | None:
        """The reader's state of `member` if it may be the same."""
        kind = member_kind(member)
        if kind == "hardlink":
            return None
        before = self.known.get(member.name)
        if before is None or (kind, member.mode, mtime_ns_of(member)) != (
                before.kind, before.mode, before.mtime_ns):
            return None
        if kind == "symlink" or (kind == "file" and member.size
                                 == before.size <= _HELD_MOST):
            return before
        return None


def _retarred(reader: TarReader, context: CheckContext, owner: Owner,
              record: Record | None, prefix: str,
              omit: _Omission) -> Generator[bytes, None, None]:
    for member in reader:
        checked = check_member(member, context)
        if checked is None:
            continue
        before = omit.holds(checked)
        if before is not None:
            state = yield from _unless_unchanged(reader, checked, owner,
                                                 prefix, before)
            if state == before:
                omit.left_out.add(checked.name)
        elif member_kind(checked) == "hardlink" \
                and checked.linkname in omit.left_out:
            state = _link_state(checked)
            omit.left_out.add(checked.name)
        else:
            state = yield from _member_chunks(reader, checked, owner, prefix)
        if record is not None:
            record[checked.name] = state


def _unless_unchanged(
    reader: TarReader, member: tarfile.TarInfo, owner: Owner, prefix: str,
    before: FileState,
) -> Generator[bytes, None, FileState]:
    """The member's chunks, or none if it is as `before` says."""
    chunks = _member_chunks(reader, member, owner, prefix)
    held = []
    while True:
        try:
            held.append(next(chunks))
        except StopIteration as end:
            state: FileState = end.value
            break
    if state != before:
        yield from held
    return state


def _member_chunks(reader: TarReader, member: tarfile.TarInfo, owner: Owner,
                   prefix: str) -> Generator[bytes, None, FileState]:
    kind, mtime_ns = member_kind(member), mtime_ns_of(member)
    linkname = prefix + member.linkname if kind == "hardlink" \
        else member.linkname
    header = member_header(
        prefix + member.name, _HEADER_KINDS[kind], mode=member.mode,
        mtime_ns=mtime_ns, owner=owner, size=member.size, linkname=linkname)
    if kind != "file":
        yield header
        return _link_state(member)
    digest = yield from _file_chunks(reader, member, header)
    return FileState(kind, member.mode, digest, member.size, mtime_ns)


def _link_state(member: tarfile.TarInfo) -> FileState:
    """The state of a member with no data: a folder or a link."""
    return FileState(member_kind(member), member.mode, member.linkname, 0,
                     mtime_ns_of(member))


def _file_chunks(reader: TarReader, member: tarfile.TarInfo,
                 header: bytes) -> Generator[bytes, None, str]:
    """Header, data and padding; a small file's as a single chunk."""
    digest = hashlib.sha256()
    if member.size <= CHUNK_SIZE:
        data = b"".join(reader.chunks(member))
        digest.update(data)
        yield header + data + padding(member.size)
        return digest.hexdigest()
    yield header
    for chunk in reader.chunks(member):
        digest.update(chunk)
        yield chunk
    tail = padding(member.size)
    if tail:  # an empty chunk would end an HTTP chunked upload
        yield tail
    return digest.hexdigest()
