"""Choosing what of a finished run comes back, from the driver's listing.

No engine: a WarmRun is made by hand, its fetch recording the names.
"""

from __future__ import annotations

import pytest

from runners._base import files_back, merged_sandbox
from runners.container import ExecResult
from runners.errors import ContainerError
from runners.warm import Listed, WarmRun, parse_listing
from tarpipe import Limits, TarStream, pack_files
from tarpipe.errors import LimitExceededError, UnsafeMemberError
from tarpipe.filediff import FileState, Kind

NS = 1_000_000_000
RESULT = ExecResult(b"", b"", False, False, 0, False, 0.1)


def state(kind: Kind, mode: int, size: int, mtime_ns: int) -> FileState:
    return FileState(kind, mode, "digest" if kind == "file" else "", size,
                     mtime_ns)


BEFORE = {
    "same.o": state("file", 0o644, 10, 5 * NS + 1),
    "lib": state("directory", 0o755, 0, 7 * NS),
    "lib/same.c": state("file", 0o644, 3, 6 * NS),
    "touched.c": state("file", 0o644, 3, 6 * NS),
    "chmodded": state("file", 0o644, 3, 6 * NS),
    "grown": state("file", 0o644, 3, 6 * NS),
    "gone.c": state("file", 0o644, 3, 6 * NS),
}
LISTING = {
    "same.o": Listed("file", 0o644, 10, 5 * NS + 1),
    "lib": Listed("directory", 0o755, 4096, 7 * NS),
    "lib/same.c": Listed("file", 0o644, 3, 6 * NS),
    "touched.c": Listed("file", 0o644, 3, 6 * NS + 1),
    "chmodded": Listed("file", 0o755, 3, 6 * NS),
    "grown": Listed("file", 0o644, 4, 6 * NS),
    "new.o": Listed("file", 0o644, 1, 9 * NS),
    "pipe": Listed("fifo", 0o644, 0, 9 * NS),
}


def warm_run(listing: dict[str, Listed] | None,
             asked: list[list[str]]) -> WarmRun:
    def fetch(names: list[str]) -> TarStream:
        asked.append(names)
        return pack_files({}, mtime_ns=0)

    return WarmRun(RESULT, pack_files({"all": b""}, mtime_ns=0),
                   listing=listing, _fetch=fetch)


def test_only_what_differs_from_what_went_in_is_asked_for() -> None:
    asked: list[list[str]] = []

    _, same = files_back(warm_run(LISTING, asked), BEFORE)

    assert sorted(same) == ["lib/same.c", "same.o"]
    assert same["same.o"] is BEFORE["same.o"]
    assert asked == [sorted(["chmodded", "grown", "lib", "new.o", "pipe",
                             "touched.c"])]


def test_without_a_listing_every_file_comes_back() -> None:
    asked: list[list[str]] = []
    run = warm_run(None, asked)

    stream, same = files_back(run, BEFORE)

    assert (stream, same, asked) == (run.files, {}, [])


def test_the_sandbox_is_what_was_left_alone_and_what_was_read() -> None:
    same = {"lib/same.c": BEFORE["lib/same.c"]}
    fetched = {"lib": BEFORE["lib"], "new.o": state("file", 0o644, 1, 9)}

    after = merged_sandbox(same, fetched, Limits())

    assert after == {**same, **fetched}


@pytest.mark.parametrize("fetched", [
    {},
    {"lib": state("file", 0o644, 1, 9)},
], ids=["folder missing", "folder now a file"])
def test_a_file_left_alone_outside_a_folder_that_came_back_is_refused(
        fetched: dict[str, FileState]) -> None:
    same = {"lib/same.c": BEFORE["lib/same.c"]}

    with pytest.raises(UnsafeMemberError) as refused:
        merged_sandbox(same, fetched, Limits())

    assert refused.value.member == "lib/same.c"


@pytest.mark.parametrize(("limits", "limit"), [
    (Limits(max_members=2), "max_members"),
    (Limits(max_total_bytes=12), "max_total_bytes"),
])
def test_the_whole_sandbox_is_held_to_the_limits(limits: Limits,
                                                 limit: str) -> None:
    same = {"same.o": BEFORE["same.o"]}
    fetched = {"a": state("file", 0o644, 2, 1), "b": state("file", 0o644, 1, 1)}

    with pytest.raises(LimitExceededError) as refused:
        merged_sandbox(same, fetched, limits)

    assert refused.value.limit == limit


def test_a_listing_is_parsed_to_the_nanosecond_before_and_after_1970(
) -> None:
    data = (b"f 644 12 1700000000 20.1234567890 hiker.c\0"
            b"d 2755 4096 -101 19.5000000000 old dir\0"
            b"p 600 0 5 05 fifo\0"
            b"f 644 1 5 05.0000000010 a\nb\xff\0")

    assert parse_listing(data) == {
        "hiker.c": Listed("file", 0o644, 12, 1_700_000_000_123_456_789),
        "old dir": Listed("directory", 0o2755, 4096, -100_500_000_000),
        "fifo": Listed("fifo", 0o600, 0, 5 * NS),
        "a\nb\udcff": Listed("file", 0o644, 1, 5 * NS + 1),
    }
    assert parse_listing(b"") == {}


@pytest.mark.parametrize("data", [
    b"f 644 12 1700000000 20.1 hiker.c",
    b"f 644 12 1700000000 20.1 \0",
    b"f 999 12 1700000000 20.1 x\0",
    b"f 644 -1 1700000000 20.1 x\0",
    b"f 644 12 17e9 20.1 x\0",
    b"garbage\0",
], ids=["no end", "no name", "bad mode", "bad size", "bad time", "garbage"])
def test_a_garbled_listing_is_refused(data: bytes) -> None:
    with pytest.raises(ContainerError, match="listing"):
        parse_listing(data)
