"""A tar stream that can be read once, and says so when read twice."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

from ._header import END_OF_ARCHIVE
from .errors import StreamConsumedError

__all__ = ["TarStream", "concat"]

Members = Generator[bytes, None, None]


class TarStream(Iterator[bytes]):
    """The chunks of one tar archive, produced lazily, readable once.

    The bytes come from a generator of members that reads files as it
    goes, so they cannot be replayed: `iter()` after reading has started
    raises `StreamConsumedError` rather than yielding nothing, which a
    caller would take for an empty archive.  The end-of-archive blocks
    follow the last member only if every member was produced: a stream
    cut short by an error is never a plausible whole archive.
    """

    def __init__(self, members: Members) -> None:
        self._members = members
        self._chunks = self._archive()
        self._started = False

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise _consumed()
        self._started = True
        return self._chunks

    def __next__(self) -> bytes:
        self._started = True
        return next(self._chunks)

    def close(self) -> None:
        """Stop early, closing any file the stream has open."""
        self._started = True
        self._chunks.close()
        self._members.close()

    def _archive(self) -> Members:
        yield from self._members
        yield END_OF_ARCHIVE

    def _take_members(self) -> Members:
        """The members without the end blocks, for `concat`; reads it."""
        if self._started:
            raise _consumed()
        self._started = True
        return self._members


def concat(*streams: TarStream | Callable[[], TarStream]) -> TarStream:
    """One archive of the members of `streams`, in order, read once.

    Each stream is read only as the result is; the end-of-archive blocks
    come once, after the last member of the last stream.  A stream that
    depends on the ones before it (on a record they fill as they are
    read, say) can be given as a function that makes it: it is called
    when the result reaches it.
    """
    taken = [s._take_members() if isinstance(s, TarStream) else s
             for s in streams]

    def members() -> Members:
        for body in taken:
            yield from body if not callable(body) else body()._take_members()

    return TarStream(members())


def _consumed() -> StreamConsumedError:
    return StreamConsumedError(
        "this tar stream has already been read; pack the sandbox again "
        "to get a new one")
