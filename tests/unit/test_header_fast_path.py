"""member_header's fast path writes exactly the bytes tarfile writes."""

from __future__ import annotations

import os
import tarfile

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tarpipe._header import (
    Kind,
    _plain_header,
    _tarfile_header,
    member_header,
)
from tarpipe.owner import NOBODY, Owner

NS = 1_000_000_000
# ASCII, the Unicode tarfile sends to PAX records, and the surrogates
# os.fsdecode gives undecodable bytes (hdrcharset=BINARY).
NAME_CHARS = st.one_of(st.sampled_from("ab/._- 0"),
                       st.characters(codec="utf-8", exclude_characters="\0"),
                       st.characters(min_codepoint=0xDC80,
                                     max_codepoint=0xDCFF))
ASCII = st.characters(codec="ascii", exclude_characters="\0")
NAMES = (st.text(ASCII, min_size=1, max_size=110)
         | st.text(NAME_CHARS, min_size=1, max_size=130)
         | st.builds(lambda part, count: "/".join([part] * count),
                     st.text("abc", min_size=1, max_size=60),
                     st.integers(1, 6)))
IDS = st.integers(0, 2**32 - 1) | st.sampled_from([0, 8**7 - 1, 8**7])
USER_NAMES = st.text(ASCII, max_size=34) | st.text(NAME_CHARS, max_size=40)
OWNERS = st.builds(Owner, IDS, IDS, USER_NAMES, USER_NAMES)
MTIMES = (st.integers(-(2**80), 2**80)
          | st.integers(-10 * NS, 10 * NS)
          | st.sampled_from([(8**11 - 1) * NS, 8**11 * NS, 10**100,
                             -(10**98)]))
SIZES = st.integers(0, 2**64) | st.sampled_from([8**11 - 1, 8**11])


@settings(max_examples=1000)
@given(name=NAMES, kind=st.sampled_from(Kind), mode=st.integers(0, 2**16),
       mtime_ns=MTIMES, owner=OWNERS, size=SIZES,
       linkname=st.just("") | NAMES)
@example(name="d", kind=Kind.DIRECTORY, mode=0o755, mtime_ns=0,
         owner=NOBODY, size=5, linkname="")
@example(name="a" * 100, kind=Kind.FILE, mode=0o644, mtime_ns=-1,
         owner=NOBODY, size=8**11 - 1, linkname="")
def test_the_fast_path_gives_tarfiles_bytes(
        name: str, kind: Kind, mode: int, mtime_ns: int, owner: Owner,
        size: int, linkname: str) -> None:
    args = (name, kind, mode & 0o7777, mtime_ns, owner, size, linkname)
    fast = _plain_header(*args)
    slow = _tarfile_header(*args)

    assert fast is None or fast == slow
    if kind is Kind.FILE:
        assert member_header(name, kind, mode=mode, mtime_ns=mtime_ns,
                             owner=owner, size=size,
                             linkname=linkname) == slow


@pytest.mark.parametrize(("name", "owner", "size"), [
    ("dir03/file123.c", NOBODY, 12345),
    ("x" * 100, Owner(0, 0), 8**11 - 1),
    ("cyber-dojo.sh", Owner(8**7 - 1, 8**7 - 1, "u" * 32, "g" * 32), 0),
])
def test_sandbox_members_take_the_fast_path(name: str, owner: Owner,
                                            size: int) -> None:
    fast = _plain_header(name, Kind.FILE, 0o644, 1_700_000_000_123_456_789,
                         owner, size, "")

    assert fast is not None
    member = tarfile.TarInfo.frombuf(fast[-512:], "utf-8", "strict")
    assert (member.name, member.size, member.uid) == (name, size, owner.uid)


@pytest.mark.parametrize(("name", "owner", "size", "linkname"), [
    ("x" * 101, NOBODY, 0, ""),
    ("é", NOBODY, 0, ""),
    (os.fsdecode(b"\xff"), NOBODY, 0, ""),
    ("a", Owner(8**7, 0), 0, ""),
    ("a", Owner(0, 0, "u" * 33), 0, ""),
    ("a", NOBODY, 8**11, ""),
    ("a", NOBODY, 0, "t" * 101),
])
def test_anything_else_goes_to_tarfile(name: str, owner: Owner, size: int,
                                       linkname: str) -> None:
    assert _plain_header(name, Kind.FILE, 0o644, 0, owner, size,
                         linkname) is None
