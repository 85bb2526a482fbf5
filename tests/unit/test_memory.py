"""Small archives read into memory, under the same rules as unpacking."""

from __future__ import annotations

import pytest

from tarpipe import LimitExceededError, Limits, UnsafeMemberError, pack_files
from tarpipe._header import END_OF_ARCHIVE, Kind, member_header
from tarpipe.memory import unpack_files
from tarpipe.owner import NOBODY


def test_unpack_files_reads_small_archives_into_memory() -> None:
    files = {"a.txt": b"one", "d/e/f.bin": bytes(range(256)), "empty": b""}
    assert unpack_files(pack_files(files, mtime_ns=1)) == files


def test_unpack_files_keeps_to_the_limits() -> None:
    big = {"a": b"x" * 600, "b": b"y" * 600}
    with pytest.raises(LimitExceededError, match="'b'"):
        unpack_files(pack_files(big, mtime_ns=1),
                     limits=Limits(max_total_bytes=1000))


def test_unpack_files_refuses_links() -> None:
    link = member_header("evil", Kind.SYMLINK, mode=0o777, mtime_ns=0,
                         owner=NOBODY, linkname="/etc/passwd")
    with pytest.raises(UnsafeMemberError, match="'evil'"):
        unpack_files([link + END_OF_ARCHIVE])
