"""Reading a tar stream one member at a time, from chunks or a file.

`TarReader` adapts what `unpack_into` and `retar` accept (an iterable of
bytes chunks, such as a `TarStream` or docker-py's output generators, or a
binary file object) to `tarfile`'s stream mode, which never seeks and never
holds more than the member being read.

Three things `tarfile` does not do for a hostile or broken stream are done
here, through the `_proc_member` hook `tarfile` offers to `TarInfo`
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
import functools
import io
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

from ._header import ENCODING, ERRORS
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
    if isinstance(source, bytes | bytearray | memoryview):
        return _ChunkReader(iter([source]))
    if isinstance(source, Readable):
        read = functools.partial(source.read, CHUNK_SIZE)
        return _ChunkReader(iter(read, b""))
    return _ChunkReader(iter(source))


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

    Iterating gives each member's `TarInfo` as `tarfile` parsed it; the
    data of a regular file can be read with `chunks` before the next
    member is asked for (it is skipped otherwise).  A stream that is
    truncated or corrupt raises `ArchiveError`.
    """

    def __init__(self, source: Source, limits: Limits) -> None:
        self._raw = open_source(source)
        self._limits = limits
        self._tar: _GuardedTarFile | None = None

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        with _archive_errors(None):
            # tarfile.open forwards unknown keywords to the class, which
            # its type stubs cannot express.
            opener: Callable[..., _GuardedTarFile] = _GuardedTarFile.open
            self._tar = tar = opener(fileobj=self._raw, mode="r|",
                                     encoding=ENCODING, errors=ERRORS,
                                     limits=self._limits)
        while True:
            with _archive_errors(tar.last_member):
                member = tar.next()
            if member is None:
                return
            yield member

    def chunks(self, member: tarfile.TarInfo,
               size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The data of regular file `member`, at most `size` bytes a chunk."""
        if self._tar is None:
            raise ValueError("read the members before their data")
        data = self._tar.extractfile(member)
        remaining = member.size
        while remaining and data is not None:
            with _archive_errors(member.name):
                chunk = data.read(min(size, remaining))
            if not chunk:
                raise _truncated("data", member.name)
            remaining -= len(chunk)
            yield chunk


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

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        self.limits = limits
        self.extended_run = 0
        self.last_member: str | None = None
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
