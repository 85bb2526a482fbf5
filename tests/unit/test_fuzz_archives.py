"""A fuzz of mutated archives through `unpack_into` and `retar`.

Valid archives (made by `pack_files`, `pack_dir`, and `tarfile` in the
shapes GNU tar writes: PAX records, `./` names, long names, links) are
mutated: bytes flipped, inserted, deleted; header fields rewritten with
a valid checksum; streams cut short; members duplicated; two archives
spliced at member boundaries.  Each result is fed in chunks of random
sizes.  The property:

- `unpack_into(stream, dest, replace=True)` either succeeds, with every
  path it wrote inside `dest`, or raises a `TarPipeError` and leaves
  `dest` exactly as it was (names, bytes, modes, mtimes); either way a
  sibling folder is untouched, and no other exception type escapes;
- `retar` either raises a `TarPipeError` or yields a stream that
  `unpack_into` accepts, with the same record.

Every example must finish within `DEADLINE_MS` (Hypothesis' deadline)
and is cut at `HANG_SECONDS` by an alarm, so a hang fails the test.

Profiles: about 2,000 examples per test by default (the `ci` profile,
well under a minute); `TARPIPE_FUZZ=long` selects 50,000 per test:

    TARPIPE_FUZZ=long .venv/bin/python -m pytest tests/unit/test_fuzz_archives.py
"""

from __future__ import annotations

import functools
import io
import os
import signal
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tarpipe import (
    NOBODY,
    FileState,
    Owner,
    TarPipeError,
    pack_dir,
    pack_files,
    retar,
    unpack_into,
)
from tarpipe._header import BLOCK, END_OF_ARCHIVE, format_mtime

DEADLINE_MS = 2000
HANG_SECONDS = 10
settings.register_profile(
    "ci", max_examples=2_000, deadline=DEADLINE_MS, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=50_000, deadline=DEADLINE_MS,
    suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get("TARPIPE_FUZZ", "ci"))
# 50,000 examples take minutes a test: past the suite's 120 s a test.
pytestmark = pytest.mark.timeout(
    3600 if os.environ.get("TARPIPE_FUZZ") == "long" else 120)

MTIME_NS = 1_700_000_000_123_456_789
Snapshot = dict[str, tuple[str, int, int, bytes]]


# ---- the valid archives -----------------------------------------------


def packed_files() -> bytes:
    files = {"cyber-dojo.sh": b"make\n", "hiker.c": b"int main(){}\n" * 40,
             "src/deep/a.h": b"#define A 1\n", "empty.txt": b""}
    return b"".join(pack_files(files, mtime_ns=MTIME_NS, owner=NOBODY))


def packed_dir() -> bytes:
    with tempfile.TemporaryDirectory() as root:
        tree = Path(root)
        (tree / "sub" / "inner").mkdir(parents=True)
        (tree / "sub" / "inner" / "x.o").write_bytes(bytes(range(256)) * 5)
        (tree / "makefile").write_text("all:\n\ttrue\n")
        (tree / "run.sh").write_text("#!/bin/sh\n")
        (tree / "run.sh").chmod(0o755)
        (tree / "link").symlink_to("makefile")
        os.utime(tree / "makefile", ns=(MTIME_NS, MTIME_NS))
        return b"".join(pack_dir(tree, symlinks=True))


def gnu_tar_like() -> bytes:
    """PAX, as `tar -c --format=posix .` writes it: `./` names and all."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "./", tarfile.DIRTYPE)
        add(tar, "./a.txt", data=b"alpha\n")
        add(tar, "./" + "long-name-" * 12 + ".c", data=b"long\n")
        add(tar, "./d/", tarfile.DIRTYPE, mode=0o750)
        add(tar, "./d/b", data=b"beta" * 300, mode=0o4755)
        add(tar, "./d/hard", tarfile.LNKTYPE, linkname="./d/b")
        add(tar, "./d/sym", tarfile.SYMTYPE, linkname="../a.txt")
    return out.getvalue()


def gnu_format() -> bytes:
    """GNU format: long names as `././@LongLink` members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "x" * 150, data=b"gnu long name\n")
        add(tar, "y/", tarfile.DIRTYPE)
        add(tar, "y/" + "z" * 120, tarfile.SYMTYPE, linkname="../" + "x" * 150)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, *,
        data: bytes = b"", mode: int = 0o644, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = MTIME_NS // 10**9
    info.uid = info.gid = 65534
    info.pax_headers = {"mtime": format_mtime(MTIME_NS), "atime": "1.5",
                        "ctime": "2.25"}
    tar.addfile(info, io.BytesIO(data) if data else None)


@functools.cache
def seeds() -> tuple[bytes, ...]:
    return (packed_files(), packed_dir(), gnu_tar_like(), gnu_format())


# ---- the mutations --------------------------------------------------------


def header_offsets(data: bytes) -> list[int]:
    """Offsets of the 512-byte blocks whose checksum is right."""
    return [at for at in range(0, len(data) - BLOCK + 1, BLOCK)
            if data[at:at + BLOCK].strip(b"\0") and checksum_ok(data, at)]


def checksum_ok(data: bytes, at: int) -> bool:
    block = data[at:at + BLOCK]
    try:
        stored = int(block[148:156].strip(b"\0 ") or b"-1", 8)
    except ValueError:
        return False
    return stored == checksum(block)


def checksum(block: bytes | bytearray) -> int:
    return sum(block[:148]) + 8 * ord(" ") + sum(block[156:BLOCK])


def with_checksum(block: bytearray) -> bytearray:
    block[148:156] = b"%06o\0 " % checksum(block)
    return block


# (offset, length) of the fields worth rewriting
FIELDS = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8),
          "size": (124, 12), "mtime": (136, 12), "type": (156, 1),
          "linkname": (157, 100), "magic": (257, 8), "prefix": (345, 155)}
NAMES = [b"..", b"../x", b"/etc/passwd", b"a/../../b", b".", b"./", b"",
         b"a//b", b"a/./b", b"x" * 100, b"d/b", b"a.txt", b"\xff\xfe",
         b"././@LongLink", b"PaxHeaders/x", b"sub", b"sub/inner"]
NUMBERS = [b"0", b"777", b"7777777", b"77777777777", b"-1", b"9", b" ",
           b"\x80\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00",
           b"\xff" * 12, b"1000", b"1", b"12", b"20000000000"]
TYPES = [bytes([t]) for t in b"0123456789gxLKSVDAM\0 "]

field_values = st.one_of(st.sampled_from(NAMES), st.sampled_from(NUMBERS),
                         st.sampled_from(TYPES), st.binary(max_size=16))


@st.composite
def rewrite_field(draw: st.DrawFn, data: bytes) -> bytes:
    offsets = header_offsets(data)
    if not offsets:
        return data
    at = draw(st.sampled_from(offsets))
    start, length = FIELDS[draw(st.sampled_from(sorted(FIELDS)))]
    value = draw(field_values)[:length].ljust(length, b"\0")
    block = bytearray(data[at:at + BLOCK])
    block[start:start + length] = value
    return data[:at] + bytes(with_checksum(block)) + data[at + BLOCK:]


def member_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each header and what follows up to the next one."""
    offsets = header_offsets(data)
    ends = [*offsets[1:], max(len(data) - 2 * BLOCK, offsets[-1] + BLOCK)] \
        if offsets else []
    return list(zip(offsets, ends, strict=True))


@st.composite
def duplicate_member(draw: st.DrawFn, data: bytes) -> bytes:
    spans = member_spans(data)
    if not spans:
        return data
    start, end = draw(st.sampled_from(spans))
    where = draw(st.sampled_from([s for s, _ in spans] + [len(data)]))
    return data[:where] + data[start:end] + data[where:]


@st.composite
def splice(draw: st.DrawFn, data: bytes) -> bytes:
    other = draw(st.sampled_from(seeds()))
    cut = draw(st.sampled_from([s for s, _ in member_spans(data)] or [0]))
    join = draw(st.sampled_from([s for s, _ in member_spans(other)] or [0]))
    return data[:cut] + other[join:]


@st.composite
def flip(draw: st.DrawFn, data: bytes) -> bytes:
    if not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    mask = draw(st.integers(1, 255))
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1:]


@st.composite
def insert(draw: st.DrawFn, data: bytes) -> bytes:
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.binary(min_size=1, max_size=600)) + data[at:]


@st.composite
def delete(draw: st.DrawFn, data: bytes) -> bytes:
    at = draw(st.integers(0, len(data)))
    return data[:at] + data[at + draw(st.integers(1, 1024)):]


@st.composite
def truncate(draw: st.DrawFn, data: bytes) -> bytes:
    return data[:draw(st.integers(0, len(data)))]


MUTATIONS = (flip, insert, delete, rewrite_field, truncate,
             duplicate_member, splice)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(seeds()))
    for _ in range(draw(st.integers(1, 4))):
        data = draw(draw(st.sampled_from(MUTATIONS))(data))
    if draw(st.booleans()):
        data += END_OF_ARCHIVE  # mutations before it may have cut it
    return data


class Chunks(list[bytes]):
    """Chunks whose repr is short: Hypothesis prints every example's."""

    def __repr__(self) -> str:
        return f"<{sum(map(len, self))} bytes in {len(self)} chunks>"


@st.composite
def chunked(draw: st.DrawFn) -> Chunks:
    """A mutated archive cut into chunks of random sizes."""
    data = draw(mutated())
    sizes = draw(st.lists(st.integers(1, 3000), max_size=8))
    chunks, at = [], 0
    for size in sizes:
        chunks.append(data[at:at + size])
        at += size
    chunks.append(data[at:])
    return Chunks(chunk for chunk in chunks if chunk)


# ---- the checks -------------------------------------------------------------


def snapshot(root: Path) -> Snapshot:
    """Every entry under `root`: kind, mode, mtime and bytes or target."""
    found: Snapshot = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder, name)
            info = path.lstat()
            if path.is_symlink():
                kind, content = "link", os.readlink(path).encode()
            elif path.is_dir():
                kind, content = "dir", b""
            else:
                kind, content = "file", path.read_bytes()
            found[str(path.relative_to(root))] = (
                kind, info.st_mode, info.st_mtime_ns, content)
    return found


def stays_inside(dest: Path, record: dict[str, FileState]) -> None:
    """Every recorded path, and what it resolves to, is under `dest`."""
    real = os.path.realpath(dest)
    for name in record:
        path = dest / name
        assert os.path.lexists(path), name
        assert os.path.commonpath([real, os.path.realpath(path)]) == real, name
    for folder, _, _ in os.walk(dest):
        assert os.path.realpath(folder).startswith(real), folder


@contextmanager
def hang_guard() -> Iterator[None]:
    """Fail an example that runs `HANG_SECONDS`: Hypothesis' deadline
    only judges an example once it has ended."""
    def hung(signum: int, frame: FrameType | None) -> None:
        raise AssertionError(f"hung for {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def landing() -> Iterator[tuple[Path, Path]]:
    """A destination with old files, and an untouchable sibling folder."""
    with tempfile.TemporaryDirectory() as base:
        dest, outside = Path(base, "dest"), Path(base, "outside")
        for root in (dest, outside):
            (root / "d").mkdir(parents=True)
            (root / "old.txt").write_bytes(b"old\n")
            (root / "d" / "b").write_bytes(b"old b\n")
            os.utime(root / "old.txt", ns=(MTIME_NS, MTIME_NS))
        yield dest, outside


def test_the_seeds_are_valid_and_their_headers_are_found() -> None:
    for seed in seeds():
        with landing() as (dest, _):
            assert unpack_into(seed, dest, replace=True, allow_links=True)
        assert len(header_offsets(seed)) >= 3


@PROFILE
@given(chunks=chunked(), allow_links=st.booleans())
def test_unpack_writes_inside_dest_or_raises_and_leaves_it(
        chunks: Chunks, allow_links: bool) -> None:
    note(f"archive: {b''.join(chunks)!r}")
    with landing() as (dest, outside), hang_guard():
        before, beside = snapshot(dest), snapshot(outside)
        others = set(os.listdir(dest.parent))
        try:
            record = unpack_into(iter(chunks), dest, replace=True,
                                 allow_links=allow_links)
        except TarPipeError:
            assert snapshot(dest) == before
        else:
            stays_inside(dest, record)
        assert snapshot(outside) == beside
        lock = f".{dest.name}.tarpipe.lock"
        assert set(os.listdir(dest.parent)) - {lock} == others


@PROFILE
@given(chunks=chunked(), allow_links=st.booleans())
def test_retar_raises_or_gives_what_unpack_accepts(
        chunks: Chunks, allow_links: bool) -> None:
    note(f"archive: {b''.join(chunks)!r}")
    owner = Owner(1000, 1000, "a", "b")
    with hang_guard():
        retarred: dict[str, FileState] = {}
        try:
            out = b"".join(retar(iter(chunks), owner=owner,
                                 allow_links=allow_links, record=retarred))
        except TarPipeError:
            return
        with landing() as (dest, _):
            unpacked = unpack_into(out, dest, replace=True,
                                   allow_links=allow_links)
            stays_inside(dest, unpacked)
    assert unpacked == retarred


def directory_with_a_linkname() -> bytes:
    """What a GNU long-link (K) header spliced before a folder gives."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("d")
        info.type, info.linkname = tarfile.DIRTYPE, "../" + "x" * 120
        tar.addfile(info)
    return out.getvalue()


def test_retar_drops_the_linkname_of_a_folder() -> None:
    record: dict[str, FileState] = {}
    out = b"".join(retar(directory_with_a_linkname(), owner=NOBODY,
                         record=record))
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        linknames = [member.linkname for member in tar]
    assert (linknames, record["d"].digest) == ([""], "")
