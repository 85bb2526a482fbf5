"""A tar stream that can be read once, and says so when read twice."""

from __future__ import annotations

from collections.abc import Generator, Iterator

from .errors import StreamConsumedError

__all__ = ["TarStream"]


class TarStream(Iterator[bytes]):
    """The chunks of one tar archive, produced lazily, readable once.

    The bytes come from a generator that reads files as it goes, so they
    cannot be replayed.  The first `iter()` hands that generator out; a
    later one raises `StreamConsumedError` rather than yielding what is
    left, which a second reader would take for a whole (or empty)
    archive.  `next()` on the stream itself also works, and counts as
    starting to read it.
    """

    def __init__(self, chunks: Generator[bytes, None, None]) -> None:
        self._chunks = chunks
        self._started = False

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise StreamConsumedError(
                "this tar stream has already been read; pack the sandbox "
                "again to get a new one")
        self._started = True
        return self._chunks

    def __next__(self) -> bytes:
        self._started = True
        return next(self._chunks)

    def close(self) -> None:
        """Stop early, closing any file the stream has open."""
        self._started = True
        self._chunks.close()
