"""Check a tar stream and write it out again, without touching a disk.

`retar` lets an archive flow container -> memory -> container: every
member passes the same rules as `unpack_into`, and goes out with a header
of tarpipe's own making (exact nanosecond mtime, cleaned mode, the given
owner), its data passed through chunk by chunk.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Generator
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
    """
    _check_prefix(prefix)
    reader = TarReader(stream, limits)
    context = CheckContext(limits, allow_links)
    return TarStream(_retarred(reader, context, owner, record, prefix))


def _check_prefix(prefix: str) -> None:
    parts = prefix.split("/")
    if prefix and (parts[-1] != "" or prefix.startswith("/")
                   or any(part in ("", ".", "..") for part in parts[:-1])):
        raise ValueError(f"prefix must be a relative folder path ending "
                         f"in '/', without '.' or '..', not {prefix!r}")


def _retarred(reader: TarReader, context: CheckContext, owner: Owner,
              record: Record | None,
              prefix: str) -> Generator[bytes, None, None]:
    for member in reader:
        checked = check_member(member, context)
        if checked is None:
            continue
        state = yield from _member_chunks(reader, checked, owner, prefix)
        if record is not None:
            record[checked.name] = state


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
        return FileState(kind, member.mode, member.linkname, 0, mtime_ns)
    digest = yield from _file_chunks(reader, member, header)
    return FileState(kind, member.mode, digest, member.size, mtime_ns)


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
