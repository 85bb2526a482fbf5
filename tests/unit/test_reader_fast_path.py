"""TarReader's own header parsing changes nothing tarfile would decide.

The reference is the same reader with its fast path turned off, so that
`tarfile` parses every header: members, data and errors must be the same
for any stream, well-formed, rewritten field by field, or damaged.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tarpipe import _reader
from tarpipe._header import END_OF_ARCHIVE, padding
from tarpipe._reader import TarReader
from tarpipe.limits import Limits
from tarpipe.owner import NOBODY
from tarpipe.pack import pack_dir, pack_files

FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type",
          "linkname", "uname", "gname", "devmajor", "devminor",
          "pax_headers", "sparse", "offset", "offset_data")
LIMITS = Limits(max_pax_header_bytes=2048)
Outcome = tuple[list[str], str]


class TarfileReader(TarReader):
    """The reader as it was: tarfile parses every header."""

    def _plain_member(self, first: bytes) -> None:
        return None


def outcome(reader: TarReader, read_data: bool) -> Outcome:
    """Every member's fields (and data), then the error that ended it.

    Fields are compared by their repr, so that a NaN mtime equals itself.
    """
    seen: list[str] = []
    try:
        for member in reader:
            data = b""
            if read_data and member.isreg():
                data = b"".join(reader.chunks(member, 700))
            seen.append(repr([*(getattr(member, f) for f in FIELDS), data]))
    except Exception as error:
        return seen, f"{type(error).__name__}: {error}"
    return seen, ""


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i:i + size] for i in range(0, len(data), size))


CHARS = st.one_of(st.sampled_from("ab/._ "),
                  st.characters(codec="utf-8", exclude_characters="\0"),
                  st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF))
# Long names with a slash: tarfile's ustar format splits them in two.
SPLIT_NAMES = st.builds("{}/{}".format, st.text("ab", min_size=100,
                                                max_size=150),
                        st.text("ab/", min_size=1, max_size=99))
NAMES = st.text(CHARS, max_size=120) | SPLIT_NAMES
TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE,
                         tarfile.CONTTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                         tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE,
                         b"V"])
FORMATS: tuple[Literal[0, 1, 2], ...] = (
    tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)
PAX_KEYS = st.sampled_from(["comment", "atime", "ctime", "path", "linkpath",
                            "size", "uid", "mtime", "uname", "hdrcharset",
                            "GNU.sparse.map", "SCHILY.xattr.user.x"])
PAX_VALUES = (st.text(CHARS, max_size=20)
              | st.integers(-5, 2**40).map(str)
              | st.sampled_from(["1.5", " 7 ", "1_0", "nan", "x", "BINARY"]))


@st.composite
def members(draw: st.DrawFn) -> bytes:
    """One member as tarfile writes it in any of its formats."""
    info = tarfile.TarInfo(draw(NAMES))
    info.type = draw(TYPES)
    info.mode = draw(st.integers(0, 0o7777))
    info.uid = draw(st.integers(0, 8**7 - 1) | st.integers(0, 2**22))
    info.gid = draw(st.integers(0, 8**7 - 1))
    info.uname = draw(st.text(CHARS, max_size=33))
    info.mtime = draw(st.integers(0, 2**33) | st.integers(-(2**34), 2**34)
                      | st.floats(0, 2**33, allow_nan=False))
    info.linkname = draw(st.just("") | NAMES)
    data = draw(st.binary(max_size=1100)) if info.isreg() else b""
    info.size = len(data)
    fmt = draw(st.sampled_from(FORMATS))
    if fmt == tarfile.PAX_FORMAT:
        info.pax_headers = draw(st.dictionaries(PAX_KEYS, PAX_VALUES,
                                                max_size=3))
    try:
        header = info.tobuf(fmt, "utf-8", "surrogateescape")
    except (ValueError, UnicodeError):
        header = tarfile.TarInfo("plain").tobuf(tarfile.USTAR_FORMAT)
    return header + data + padding(len(data))


NUMBER_FIELDS = [(100, 108), (108, 116), (116, 124), (124, 136),
                 (136, 148), (329, 337), (337, 345)]
FIELD_BYTES = st.binary(min_size=1, max_size=12) | st.text(
    "01234567 \0\t\n\r\x0b\x0c\x1c+-_o", min_size=1,
    max_size=12).map(str.encode)


def rewrite_field(data: bytearray, block: int, where: tuple[int, int],
                  value: bytes, signed: bool) -> None:
    """Put `value` in a header's field and make its checksum right again."""
    start, end = block * 512 + where[0], block * 512 + where[1]
    data[start:end] = value.ljust(end - start, b"\0")[:end - start]
    header = data[block * 512:block * 512 + 512]
    header[148:156] = b" " * 8
    total = sum(b - 256 if signed and b > 127 else b for b in header)
    data[block * 512 + 148:block * 512 + 156] = b"%06o\0 " % (total & 0o777777)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Members and end blocks, some fields rewritten, maybe cut short."""
    data = bytearray(b"".join(draw(st.lists(members(), max_size=5)))
                     + END_OF_ARCHIVE)
    blocks = len(data) // 512
    for _ in range(draw(st.integers(0, 3))):
        rewrite_field(data, draw(st.integers(0, blocks - 1)),
                      draw(st.sampled_from(NUMBER_FIELDS)),
                      draw(FIELD_BYTES), draw(st.booleans()))
    if draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=streams(), chunk=st.integers(1, 9) | st.integers(60, 3000),
       read_data=st.booleans())
def test_the_fast_path_decides_as_tarfile_does(data: bytes, chunk: int,
                                               read_data: bool) -> None:
    fast = outcome(TarReader(chunked(data, chunk), LIMITS), read_data)
    slow = outcome(TarfileReader(chunked(data, chunk), LIMITS), read_data)

    assert fast == slow


def with_pax(payload: bytes, size: int | None = None,
             data: bytes = b"abc") -> bytes:
    """A file "f" after a PAX header of `payload`, declared `size` long."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = len(payload) if size is None else size
    info = tarfile.TarInfo("f")
    info.size = len(data)
    return (pax.tobuf(tarfile.USTAR_FORMAT) + payload
            + padding(len(payload)) + info.tobuf(tarfile.USTAR_FORMAT)
            + data + padding(len(data)) + END_OF_ARCHIVE)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("data", [
    with_pax(b"0 a=" + b"x" * 507 + b"\n"),  # a length of 0
    with_pax(b"5 a=b\n"),
    with_pax(b"7 a=b\n\n"),
    with_pax(b"9 a=b\n"),
    with_pax(b"06 a=b\n"),
    with_pax(b"5 ab\n"),
    with_pax(b"5 =ab\n"),
    with_pax(b"6 a=bc"),
    with_pax(b"6 a=b\nxyz"),
    with_pax(b"6 a=b\n7 c=de\n", size=6),  # a record in the padding
    with_pax(b"6 a=b\n", size=20),
    with_pax(b""),
    with_pax(b"12 path=\xff\xfe\n"),
    with_pax(b"21 hdrcharset=BINARY\n12 path=\xff\xfe\n"),
    with_pax(b"17 path=a/b/c///\n"),
    with_pax(b"12 uid=abcd\n13 size= 2 \n15 mtime=1e3_0\n"),
    with_pax(b"17 size=99999999\n"),
    with_pax(b"16 size=-00001\n"),
    with_pax(b"22 GNU.sparse.size=10\n"),
    with_pax(b"17 linkpath=\xc3\xa9\n11 gname=g\n"),
], ids=lambda data: repr(data[512:540]))
def test_odd_pax_records_are_read_as_tarfile_reads_them(data: bytes) -> None:
    for chunk in (len(data), 100):
        fast = outcome(TarReader(chunked(data, chunk), LIMITS), True)
        assert fast == outcome(TarfileReader([data], LIMITS), True)


def gnu_tar(source: Path, *options: str) -> bytes:
    """What the containers' GNU tar writes (a baseline may run tar)."""
    return subprocess.run(["tar", "-c", *options, "--sort=name",
                           "--numeric-owner", "-C", str(source), "."],
                          check=True, capture_output=True).stdout


def a_sandbox(root: Path) -> Path:
    (root / "src" / ("d" * 120)).mkdir(parents=True)
    (root / "src" / "cyber-dojo.sh").write_bytes(b"make\n")
    (root / "src" / ("d" * 120) / "é.c").write_bytes(b"x" * 5000)
    (root / "src" / "link").symlink_to("cyber-dojo.sh")
    return root / "src"


@pytest.mark.parametrize("options", [
    ("--format=posix", "--pax-option=delete=atime,delete=ctime"),
    ("--format=posix",),
    ("--format=ustar",),
])
def test_gnu_tar_streams_are_read_alike(options: tuple[str, ...],
                                        tmp_path: Path) -> None:
    source = a_sandbox(tmp_path)
    (source / ("d" * 120)).rename(source / "d")  # ustar fits 100 bytes
    data = gnu_tar(source, *options)

    fast = outcome(TarReader(chunked(data, 4096), LIMITS), True)

    assert fast == outcome(TarfileReader([data], LIMITS), True)
    assert len(fast[0]) == 5 and fast[1] == ""


def test_sandboxes_never_reach_tarfile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tarpipe's own streams and GNU tar's PAX ones are read here alone."""
    source = a_sandbox(tmp_path)
    streams = [b"".join(pack_dir(source, symlinks=True)),
               b"".join(pack_files({"a/b.c": b"1", "é" * 80: b"2"},
                                   mtime_ns=-1, owner=NOBODY)),
               gnu_tar(source, "--format=posix")]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tarfile was asked to read")

    monkeypatch.setattr(_reader._GuardedTarFile, "open", refuse)
    for data in streams:
        assert outcome(TarReader(chunked(data, 1000), LIMITS), True)[1] == ""


def test_offsets_count_from_the_start_of_the_stream() -> None:
    """Also after tarfile takes over (at a GNU long name)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w",
                      format=tarfile.GNU_FORMAT) as tar:
        for name in ("a", "n" * 200, "b"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        expected = [(m.name, m.offset, m.offset_data, b"abc") for m in tar]

    reader = TarReader([buffer.getvalue()], LIMITS)
    found = [(m.name, m.offset, m.offset_data, b"".join(reader.chunks(m)))
             for m in reader]

    assert found == expected
    assert found[-1][1] > 2048


def test_data_of_an_earlier_member_is_refused() -> None:
    data = b"".join(pack_files({"a": b"1", "b": b"2"}, mtime_ns=0))
    reader = TarReader([data], LIMITS)
    members = iter(reader)
    first = next(members)
    next(members)

    with pytest.raises(ValueError, match="member read last"):
        list(reader.chunks(first))


def test_unread_data_is_skipped_across_chunks() -> None:
    files = {"a": os.urandom(70_000), "b": b"second"}
    data = b"".join(pack_files(files, mtime_ns=0))
    reader = TarReader(chunked(data, 333), LIMITS)

    read = {m.name: b"".join(reader.chunks(m)) for m in reader
            if m.name == "b"}

    assert read == {"b": b"second"}
