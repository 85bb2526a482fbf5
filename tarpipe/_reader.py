"""Reading a tar stream one member at a time, from chunks or a file.

`TarReader` reads what `unpack_into` and `retar` accept (an iterable of
bytes chunks, such as a `TarStream` or docker-py's output generators, or a
binary file object) front to back: it never seeks and never holds more
than the member being read.

Parsing headers is most of what `tarfile` spends on a stream of small
files, so the headers every sandbox is made of (the ustar header of a
file, directory or link, after at most one PAX header of plain records,
no bigger than `Limits.max_pax_header_bytes`) are parsed here, into the
very `TarInfo` that `tarfile` would make, and the data is read straight
from the chunks.  At the first header that is anything else (a global,
GNU or sparse header, a base-256 number, a `hdrcharset` record, a corrupt
or cut-short header) `tarfile`'s stream mode takes the rest of the stream
from that header on, and decides as it always did.

Three things `tarfile` does not do for a hostile or broken stream are
done for it, through the `_proc_member` hook `tarfile` offers to `TarInfo`
subclasses:

- An extended header (PAX, or a GNU long name or link) is read into memory
  whole, and its size is declared by the stream.  Its declared size is
  checked against `Limits.max_pax_header_bytes` before `tarfile` reads it,
  and a run of extended headers with no member after them is cut short.
- A GNU sparse member's map is read block after block for as long as the
  stream says more follow; sparse members are refused before that.
- A stream that ends inside a header, or holds a corrupt header after the
  first, looks to `tarfile` like a normal end.  Here only the
  end-of-archive block ends a stream; anything else is an `ArchiveError`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import itertools
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Protocol,
    Self,
    TypeAlias,
    runtime_checkable,
)

from ._header import BLOCK, ENCODING, ERRORS
from .errors import ArchiveError, LimitExceededError, UnsafeMemberError
from .limits import Limits

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["CHUNK_SIZE", "Chunk", "Readable", "Source", "TarReader",
           "open_source"]

CHUNK_SIZE: Final = 64 * 1024
# 'g', 'x', 'L' and 'K' before one member are as many as any writer uses.
_MAX_EXTENDED_RUN: Final = 8
_EXTENDED_TYPES: Final = (tarfile.XHDTYPE, tarfile.XGLTYPE,
                          tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                          tarfile.GNUTYPE_LONGLINK)
# Private in tarfile, but the documented way for a TarInfo subclass to
# take over header processing (see the comment above it in tarfile.py).
_PROC_MEMBER: Final[Callable[[tarfile.TarInfo, tarfile.TarFile],
                             tarfile.TarInfo]] = (
    vars(tarfile.TarInfo)["_proc_member"])
_EOF_HEADER: Final[type[Exception]] = vars(tarfile)["EOFHeaderError"]
_EMPTY_HEADER: Final[type[Exception]] = vars(tarfile)["EmptyHeaderError"]
_TRUNCATED_HEADER: Final[type[Exception]] = (
    vars(tarfile)["TruncatedHeaderError"])

_ZERO_BLOCK: Final = bytes(BLOCK)
# The member types parsed here; every other goes to tarfile.
_PLAIN_TYPES: Final = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE,
                       tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
_DATA_TYPES: Final = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# mode, uid, gid, size, mtime, chksum; then devmajor, devminor
_NUMBER_FIELDS: Final = struct.Struct(
    "100x 8s 8s 8s 12s 12s 8s 173x 8s 8s 167x")
_PAX_NUMBERS: Final[dict[str, Callable[[str], int | float]]] = {
    "size": int, "uid": int, "gid": int, "mtime": float}
_PAX_TEXTS: Final = {"linkpath": "linkname", "uname": "uname",
                     "gname": "gname"}
_SIZE: Final = 3
_CHKSUM: Final = 5


@runtime_checkable
class Readable(Protocol):
    """A binary file object, as far as reading it goes."""

    def read(self, size: int, /) -> bytes: ...


Chunk: TypeAlias = bytes | bytearray | memoryview
Source: TypeAlias = Iterable[Chunk] | Readable | Chunk


def open_source(source: Source) -> io.RawIOBase:
    """A read-only, non-seekable raw file reading `source`.

    `source` is a binary file object, an iterable of bytes-like chunks,
    or, as a convenience, the bytes of a whole archive.
    `iter()` is called on an iterable at once, so a `TarStream` read
    before raises its `StreamConsumedError` here, before anything is done.
    At most one chunk is held beyond what a caller asked to read.
    """
    return _ChunkReader(_chunks_of(source))


def _chunks_of(source: Source) -> Iterator[Chunk]:
    if isinstance(source, bytes | bytearray | memoryview):
        return iter([source])
    if isinstance(source, Readable):
        read = functools.partial(source.read, CHUNK_SIZE)
        return iter(read, b"")
    return iter(source)


class _ChunkReader(io.RawIOBase):
    """A raw file over an iterator of chunks, never seekable."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        super().__init__()
        self._chunks = chunks
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._rest:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._rest = memoryview(chunk).cast("B")
        target = memoryview(buffer).cast("B")
        size = min(len(target), len(self._rest))
        target[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size


class TarReader:
    """The members of one tar stream, in order, read in stream mode.

    Iterating gives each member's `TarInfo` as `tarfile` would parse it;
    the data of a regular file can be read with `chunks` before the next
    member is asked for (it is skipped otherwise).  A stream that is
    truncated or corrupt raises `ArchiveError`.
    """

    def __init__(self, source: Source, limits: Limits) -> None:
        self._buffer = _Buffer(_chunks_of(source))
        self._limits = limits
        self._tar: _GuardedTarFile | None = None
        self._base = 0  # where tarfile took over the stream
        self._current: tarfile.TarInfo | None = None
        # Of the current member read here: its data not read yet, and
        # the padding after it.
        self._data_left = 0
        self._padding = 0

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        while True:
            self._skip_data()
            first = self._buffer.peek(BLOCK)
            if first == _ZERO_BLOCK:
                return  # the end-of-archive block
            member = None if first is None else self._plain_member(first)
            if member is None:
                break
            self._current = member
            yield member
        yield from self._tarfile_members()

    def chunks(self, member: tarfile.TarInfo,
               size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The data of regular file `member`, at most `size` bytes a chunk.

        `member` is the member read last (or a copy); its data can be
        read once.
        """
        current = self._current
        if current is None or member.offset_data != current.offset_data:
            raise ValueError("only the data of the member read last can "
                             "be read")
        if self._tar is None:
            yield from self._plain_chunks(current, size)
        else:
            yield from self._tarfile_chunks(member, size)

    def _plain_member(self, first: bytes) -> tarfile.TarInfo | None:
        """The member whose headers start with block `first`.

        None, with nothing read, unless they are a ustar header of a
        plain type after at most one PAX header of plain records.
        """
        found = self._plain_headers(first)
        if found is None:
            return None
        headers, records = found
        member = _ustar_member(headers[-BLOCK:])
        if member is None:
            return None
        _apply_pax(member, records)
        if member.size < 0:
            return None
        member.offset = self._buffer.offset
        self._buffer.skip(len(headers))
        member.offset_data = self._buffer.offset
        self._data_left = member.size if member.type in _DATA_TYPES else 0
        self._padding = -self._data_left % BLOCK
        return member

    def _plain_headers(self, first: bytes
                       ) -> tuple[bytes, dict[str, str]] | None:
        """A member's header blocks, and the records of its PAX header."""
        if first[156:157] != tarfile.XHDTYPE:
            return first, {}
        size = _pax_size(first)
        # A size over the limit is for tarfile, whose guard refuses it.
        if not 0 <= size <= self._limits.max_pax_header_bytes:
            return None
        blocks = self._buffer.peek(2 * BLOCK + _padded(size))
        if blocks is None:
            return None
        records = _pax_records(blocks[BLOCK:-BLOCK], size)
        return None if records is None else (blocks, records)

    def _skip_data(self) -> None:
        """Pass over what is left of the current member's data."""
        left = self._data_left + self._padding
        self._data_left = self._padding = 0
        if left and not self._buffer.skip(left):
            raise _truncated("data", _name(self._current))

    def _plain_chunks(self, member: tarfile.TarInfo,
                      size: int) -> Iterator[bytes]:
        while self._data_left:
            if self._current is not member:
                raise ValueError("the next member was read before the data "
                                 f"of {member.name!r}")
            wanted = min(size, self._data_left)
            chunk = self._buffer.read(wanted)
            if len(chunk) < wanted:
                raise _truncated("data", member.name)
            self._data_left -= wanted
            yield chunk

    def _tarfile_members(self) -> Iterator[tarfile.TarInfo]:
        """The rest of the stream, read by tarfile from the current header.

        Members keep their offsets from the start of the whole stream.
        """
        last, self._base = _name(self._current), self._buffer.offset
        raw = _ChunkReader(self._buffer.rest())
        with _archive_errors(last):
            # tarfile.open forwards unknown keywords to the class, which
            # its type stubs cannot express.
            opener: Callable[..., _GuardedTarFile] = _GuardedTarFile.open
            self._tar = tar = opener(fileobj=raw, mode="r|",
                                     encoding=ENCODING, errors=ERRORS,
                                     limits=self._limits, last_member=last)
        while True:
            with _archive_errors(tar.last_member):
                member = tar.next()
            if member is None:
                return
            member.offset += self._base
            member.offset_data += self._base
            self._current = member
            yield member

    def _tarfile_chunks(self, member: tarfile.TarInfo,
                        size: int) -> Iterator[bytes]:
        assert self._tar is not None
        where = copy.copy(member)  # at the offset tarfile counted
        where.offset_data -= self._base
        data = self._tar.extractfile(where)
        remaining = member.size
        while remaining and data is not None:
            with _archive_errors(member.name):
                chunk = data.read(min(size, remaining))
            if not chunk:
                raise _truncated("data", member.name)
            remaining -= len(chunk)
            yield chunk


class _Buffer:
    """A stream of chunks, read front to back in the sizes asked for.

    Holds the unread rest of the chunk pulled last.  Chunks are joined
    only for a read that spans them, so at most one chunk is held beyond
    what was asked for.
    """

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self._chunks = chunks
        self._data = b""
        self._start = 0
        #: bytes read or skipped so far
        self.offset = 0

    def peek(self, size: int) -> bytes | None:
        """The next `size` bytes, left unread; None if the stream ends."""
        if not self._fill(size):
            return None
        return self._data[self._start:self._start + size]

    def read(self, size: int) -> bytes:
        """The next `size` bytes; fewer only where the stream ends."""
        self._fill(size)
        data = self._data[self._start:self._start + size]
        self._start += len(data)
        self.offset += len(data)
        return data

    def skip(self, size: int) -> bool:
        """Pass over `size` bytes; False if the stream ends first."""
        while size > len(self._data) - self._start:
            size -= len(self._data) - self._start
            self.offset += len(self._data) - self._start
            chunk = next(self._chunks, None)
            self._data, self._start = (b"" if chunk is None
                                       else bytes(chunk)), 0
            if chunk is None:
                return False
        self._start += size
        self.offset += size
        return True

    def rest(self) -> Iterator[Chunk]:
        """The bytes not read yet, then the chunks not pulled yet."""
        held = self._data[self._start:]
        self._data, self._start = b"", 0
        return itertools.chain([held], self._chunks)

    def _fill(self, size: int) -> bool:
        """Hold at least `size` unread bytes, if the stream has them."""
        held = len(self._data) - self._start
        if held >= size:
            return True
        parts = [self._data[self._start:]] if held else []
        while held < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            parts.append(bytes(chunk))  # a copy unless it is bytes
            held += len(parts[-1])
        self._data, self._start = b"".join(parts), 0
        return held >= size


def _name(member: tarfile.TarInfo | None) -> str | None:
    return None if member is None else member.name


def _padded(size: int) -> int:
    return size + -size % BLOCK


def _numbers(block: bytes) -> list[int] | None:
    """The number fields of a header block as `TarInfo.frombuf` reads
    them; None unless all are octal and the checksum is right."""
    try:
        numbers = [int(field.partition(b"\0")[0].strip() or b"0", 8)
                   for field in _NUMBER_FIELDS.unpack(block)]
    except ValueError:
        return None  # GNU's base-256 form, or what tarfile refuses
    # tarfile also accepts a sum of signed bytes, as some old tars wrote.
    unsigned_sum = sum(block) - sum(block[148:156]) + 8 * ord(" ")
    return numbers if numbers[_CHKSUM] == unsigned_sum else None


@functools.lru_cache(maxsize=256)
def _pax_size(block: bytes) -> int:
    """The size of the records after a PAX header block; -1 if unusual.

    Cached: a writer's PAX blocks differ by their size field only.
    """
    numbers = _numbers(block)
    return -1 if numbers is None else numbers[_SIZE]


def _text(field: bytes) -> str:
    return field.partition(b"\0")[0].decode(ENCODING, ERRORS)


def _ustar_member(block: bytes) -> _GuardedTarInfo | None:
    """The member a header block describes, as `TarInfo.frombuf` makes
    it; None unless of a plain type with plain numbers."""
    numbers = _numbers(block)
    if numbers is None or block[156:157] not in _PLAIN_TYPES:
        return None
    member = _GuardedTarInfo(_text(block[:100]))
    (member.mode, member.uid, member.gid, member.size, member.mtime,
     member.chksum, member.devmajor, member.devminor) = numbers
    member.type = block[156:157]
    member.linkname = _text(block[157:257])
    member.uname = _text(block[265:297])
    member.gname = _text(block[297:329])
    if member.type == tarfile.AREGTYPE and member.name.endswith("/"):
        member.type = tarfile.DIRTYPE  # how old tars wrote a directory
    prefix = _text(block[345:500])
    if prefix:
        member.name = f"{prefix}/{member.name}"
    if member.isdir():
        # tarfile strips the slashes before joining the prefix and
        # again after: once after comes to the same.
        member.name = member.name.rstrip("/")
    return member


def _pax_records(blocks: bytes, size: int) -> dict[str, str] | None:
    """The records of a PAX header as `tarfile` reads them.

    None unless they are well-formed, fill exactly `size` bytes (zeros
    pad them), and hold no `hdrcharset` and no sparse map, the records
    that change how a member is read.
    """
    if b"hdrcharset" in blocks or blocks[size:].strip(b"\0"):
        return None
    records: dict[str, str] = {}
    start = 0
    while start < size:
        space = blocks.find(b" ", start, size)
        digits = blocks[start:space]
        if space < 0 or not digits.isdigit() or len(digits) > 9:
            return None
        end = start + int(digits)
        equals = blocks.find(b"=", space + 1, end)
        # A length of 0 would read the same record for ever.
        if not space + 1 < equals < end <= size or blocks[end - 1] != 0x0A:
            return None
        keyword = blocks[space + 1:equals].decode(ENCODING, ERRORS)
        if keyword.startswith("GNU.sparse."):
            return None
        records[keyword] = blocks[equals + 1:end - 1].decode(ENCODING,
                                                               ERRORS)
        start = end
    return records


def _apply_pax(member: tarfile.TarInfo, records: dict[str, str]) -> None:
    """Let PAX records override header fields, as `tarfile` does."""
    for keyword, value in records.items():
        convert = _PAX_NUMBERS.get(keyword)
        if convert is not None:
            try:
                setattr(member, keyword, convert(value))
            except ValueError:
                setattr(member, keyword, 0)
        elif keyword == "path":
            member.name = value.rstrip("/")
        elif keyword in _PAX_TEXTS:
            setattr(member, _PAX_TEXTS[keyword], value)
    member.pax_headers = records


class _GuardedTarInfo(tarfile.TarInfo):
    """A TarInfo whose headers are checked before tarfile acts on them."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tar)
        except _EOF_HEADER:
            raise  # the end-of-archive block: a clean end
        except _EMPTY_HEADER:
            raise _truncated("end", _last_member(tar)) from None
        except _TRUNCATED_HEADER:
            raise _truncated("header", _last_member(tar)) from None
        except tarfile.HeaderError as error:
            # Past the first member, tarfile takes a corrupt header for
            # the end of the archive; here it is an error wherever it is.
            raise _corrupt(str(error), _last_member(tar)) from None

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if isinstance(tar, _GuardedTarFile):
            self._check(tar)
        return _PROC_MEMBER(self, tar)

    def _check(self, tar: _GuardedTarFile) -> None:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeMemberError(self.name, "sparse member",
                                    "GNU sparse header")
        if self.type not in _EXTENDED_TYPES:
            tar.extended_run = 0
            return
        allowed = tar.limits.max_pax_header_bytes
        if self.size > allowed:
            raise LimitExceededError(self.name, "max_pax_header_bytes",
                                     self.size, allowed)
        tar.extended_run += 1
        if tar.extended_run > _MAX_EXTENDED_RUN:
            raise ArchiveError(f"corrupt tar stream: more than "
                               f"{_MAX_EXTENDED_RUN} extended headers in a "
                               f"row at {self.name!r}", self.name)

    def _proc_gnusparse_10(self, next: tarfile.TarInfo,
                           pax_headers: dict[str, str],
                           tar: tarfile.TarFile) -> None:
        # Overrides tarfile's reader of a GNU 1.0 sparse map, which reads
        # the stream for as many entries as the stream claims.
        name = pax_headers.get("GNU.sparse.name") or next.name
        raise UnsafeMemberError(name, "sparse member", "GNU sparse 1.0")


class _GuardedTarFile(tarfile.TarFile):
    """A TarFile that keeps no index and carries what its headers need."""

    members: list[tarfile.TarInfo]
    tarinfo = _GuardedTarInfo

    def __init__(self, *args: Any, limits: Limits,
                 last_member: str | None = None, **kwargs: Any) -> None:
        self.limits = limits
        self.extended_run = 0
        self.last_member = last_member
        super().__init__(*args, **kwargs)

    def next(self) -> tarfile.TarInfo | None:
        member = super().next()
        # A stream is never searched by name: dropping the members read so
        # far keeps memory flat however many the archive holds.
        self.members.clear()
        if member is not None:
            self.last_member = member.name
        return member


def _last_member(tar: tarfile.TarFile) -> str | None:
    return tar.last_member if isinstance(tar, _GuardedTarFile) else None


def _truncated(where: str, member: str | None) -> ArchiveError:
    if where == "data":
        text = f"inside the data of member {member!r}"
    elif member is None:
        text = "before its first member"
    elif where == "end":
        text = f"after member {member!r}, without an end-of-archive block"
    else:
        text = f"inside the header after member {member!r}"
    return ArchiveError(f"tar stream truncated: it ends {text}", member)


@contextlib.contextmanager
def _archive_errors(member: str | None) -> Iterator[None]:
    """Turn what tarfile raises about the bytes into an `ArchiveError`."""
    try:
        yield
    except tarfile.TarError as error:
        if "unexpected end of data" in str(error):
            raise _truncated("data", member) from error
        raise _corrupt(str(error), member) from error


def _corrupt(detail: str, member: str | None) -> ArchiveError:
    place = f"after member {member!r}" if member else "at its start"
    return ArchiveError(f"corrupt tar stream {place}: {detail}", member)
