"""pack_dir and pack_files: exact, deterministic, streaming, refusing."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tarpipe._header import END_OF_ARCHIVE, mtime_ns_of
from tarpipe._stream import TarStream, concat
from tarpipe.errors import (
    LimitExceededError,
    StreamConsumedError,
    TarPipeError,
    UnsafeMemberError,
)
from tarpipe.filediff import FileState, file_state
from tarpipe.owner import NOBODY, Owner
from tarpipe.pack import pack_dir, pack_directories, pack_files
from tarpipe.retar import retar

NS = 1_000_000_000
# ns, ns before 1970, whole seconds, just past 2038, 2**33 s (year 2242)
MTIMES = [
    1_700_000_000_123_456_789,
    -1,
    -1_500_000_000,
    -315_619_199_876_543_211,
    0,
    5 * NS,
    2**31 * NS + 1,
    2**33 * NS + 999_999_999,
]


Member = tuple[tarfile.TarInfo, bytes]
Files = dict[str, bytes | str]


def read_members(chunks: Iterable[bytes]) -> list[Member]:
    """Every member of a packed stream and its bytes, read as a stream."""
    found = []
    data = io.BytesIO(b"".join(chunks))
    with tarfile.open(fileobj=data, mode="r|") as archive:
        for info in archive:
            content = archive.extractfile(info) if info.isfile() else None
            found.append((info, content.read() if content else b""))
    return found


def by_name(members: list[Member]) -> dict[str, Member]:
    return {info.name: (info, data) for info, data in members}


def write(path: Path, data: bytes = b"", *, mtime_ns: int | None = None,
          mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def set_dir_mtimes(root: Path, mtime_ns: int) -> None:
    """Directory mtimes move when entries are added: set them last."""
    for folder, _, _ in os.walk(root):
        if folder != str(root):
            os.utime(folder, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    write(root / "hiker.c", b"int answer(void) { return 42; }\n")
    write(root / "cyber-dojo.sh", b"make\n", mode=0o755)
    write(root / "lib" / "a" / "util.h", b"#pragma once\n")
    write(root / "lib" / "a-b.txt", os.urandom(70_000))
    write(root / "lib" / "empty.txt")
    (root / "build").mkdir()
    return root


# -- determinism --------------------------------------------------------


def test_packing_the_same_tree_twice_gives_the_same_bytes(tree: Path) -> None:
    assert b"".join(pack_dir(tree)) == b"".join(pack_dir(tree))


def test_no_clock_leaks_into_the_bytes(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = b"".join(pack_dir(tree))
    later = time.time() + 10 * 365 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "time_ns", lambda: int(later * NS))

    assert b"".join(pack_dir(tree)) == before


def test_a_pinned_mtime_ignores_the_files_mtimes(tree: Path) -> None:
    pinned = 1_600_000_000_000_000_001
    before = b"".join(pack_dir(tree, mtime_ns=pinned))
    for path in tree.rglob("*"):
        os.utime(path, ns=(7, 7 * NS + 3))

    after = b"".join(pack_dir(tree, mtime_ns=pinned))
    assert after == before
    assert {mtime_ns_of(info) for info, _ in read_members([after])} == {pinned}


def test_pack_files_ignores_the_order_of_the_mapping() -> None:
    files: Files = {"b.c": "b", "a/z.h": b"z", "a/b/c.txt": "c",
                    "cyber-dojo.sh": "x"}
    backwards = dict(reversed(files.items()))

    first = b"".join(pack_files(files, mtime_ns=NS))
    assert first == b"".join(pack_files(files, mtime_ns=NS))
    assert first == b"".join(pack_files(backwards, mtime_ns=NS))


def test_pack_files_matches_pack_dir_of_the_same_files(tmp_path: Path) -> None:
    files = {"cyber-dojo.sh": b"make\n", "src/x y.c": b"x", "src-2/z": b"",
             "src/sub/deep.h": b"h", "caf\u00e9.txt": "\u2603".encode()}
    mtime = 1_650_000_000_000_000_123
    for name, data in files.items():
        write(tmp_path / name, data, mode=0o755 if name.endswith(".sh")
              else 0o644)
    for folder in ("src", "src/sub", "src-2"):
        (tmp_path / folder).chmod(0o755)

    packed = b"".join(pack_dir(tmp_path, mtime_ns=mtime))
    assert packed == b"".join(pack_files(files, mtime_ns=mtime))


def test_members_come_depth_first_sorted_by_name_bytes(tmp_path: Path) -> None:
    for name in ("b", "a-b", "a/x", "a/B", "\u00e9", "Z"):
        write(tmp_path / name)

    names = [info.name for info, _ in read_members(pack_dir(tmp_path))]
    assert names == ["Z", "a", "a/B", "a/x", "a-b", "b", "\u00e9"]


# -- exact metadata -----------------------------------------------------


@pytest.mark.parametrize("mtime_ns", MTIMES)
def test_file_and_dir_mtimes_are_exact(tmp_path: Path, mtime_ns: int) -> None:
    write(tmp_path / "d" / "f", b"data", mtime_ns=mtime_ns)
    os.utime(tmp_path / "d", ns=(0, mtime_ns))

    members = read_members(pack_dir(tmp_path))
    assert [(i.name, mtime_ns_of(i)) for i, _ in members] == [
        ("d", mtime_ns), ("d/f", mtime_ns)]


def test_whole_seconds_are_written_without_a_fraction(tmp_path: Path) -> None:
    write(tmp_path / "f", mtime_ns=1_700_000_000 * NS)

    [(info, _)] = read_members(pack_dir(tmp_path))
    assert info.pax_headers["mtime"] == "1700000000"


# Each with owner-read, so a test not run as root can read the file.
@pytest.mark.parametrize("mode", [0o400, 0o444, 0o604, 0o640, 0o644, 0o755,
                                  0o777, 0o4755, 0o2750, 0o1644])
def test_permission_bits_kept_special_bits_dropped(
        tmp_path: Path, mode: int) -> None:
    write(tmp_path / "f", b"x")
    (tmp_path / "d").mkdir()
    os.chmod(tmp_path / "f", mode)
    os.chmod(tmp_path / "d", mode | 0o700)

    members = by_name(read_members(pack_dir(tmp_path)))
    assert members["f"][0].mode == mode & 0o777
    assert members["d"][0].mode == (mode | 0o700) & 0o777


def test_empty_files_and_empty_dirs_are_members(tmp_path: Path) -> None:
    write(tmp_path / "empty.txt")
    (tmp_path / "empty" / "nested").mkdir(parents=True)

    members = by_name(read_members(pack_dir(tmp_path)))
    assert sorted(members) == ["empty", "empty.txt", "empty/nested"]
    assert members["empty.txt"][0].isfile()
    assert members["empty.txt"][0].size == 0
    assert members["empty/nested"][0].isdir()


NAMES = [
    b"with space.txt",
    "caf\u00e9/na\u00efve \u2603.txt".encode(),
    b"not-utf8-\xff\xfe.bin",
    b"x" * 255,
    b"/".join([b"directory-%02d" % i for i in range(12)]) + b"/leaf.c",
]


@pytest.mark.parametrize("name", NAMES, ids=["space", "non-ascii",
                                             "non-utf8", "255", "long"])
def test_names_survive_byte_for_byte(tmp_path: Path, name: bytes) -> None:
    path = os.path.join(os.fsencode(tmp_path), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(name)

    members = read_members(pack_dir(tmp_path))
    files = {os.fsencode(i.name): data for i, data in members if i.isfile()}
    assert files == {name: name}


def test_owner_replaces_the_files_ids(tree: Path) -> None:
    alice = Owner(1234, 5678, "alice", "staff")

    for owner in (alice, NOBODY):
        members = read_members(pack_dir(tree, owner=owner))
        ids = {(i.uid, i.gid, i.uname, i.gname) for i, _ in members}
        assert ids == {(owner.uid, owner.gid, owner.uname, owner.gname)}


def test_file_contents_are_exact(tree: Path) -> None:
    members = by_name(read_members(pack_dir(tree, chunk_size=4096)))

    for path in tree.rglob("*"):
        info, data = members[path.relative_to(tree).as_posix()]
        assert info.isdir() == path.is_dir()
        if path.is_file():
            assert data == path.read_bytes()


# -- streaming ----------------------------------------------------------


def test_chunks_stay_small_whatever_the_file_size(tmp_path: Path) -> None:
    write(tmp_path / "big", os.urandom(1_000_000))

    sizes = [len(chunk) for chunk in pack_dir(tmp_path, chunk_size=4096)]
    assert sum(sizes) > 1_000_000
    assert max(sizes) <= 4096


def test_the_stream_ends_with_the_end_of_archive_blocks(tree: Path) -> None:
    data = b"".join(pack_dir(tree))
    assert data.endswith(END_OF_ARCHIVE)
    assert len(data) % 512 == 0


def test_a_file_that_shrinks_while_read_raises(tmp_path: Path) -> None:
    big = write(tmp_path / "big", bytes(100_000))
    chunks = iter(pack_dir(tmp_path, chunk_size=4096))
    next(chunks)
    os.truncate(big, 10_000)

    with pytest.raises(TarPipeError, match="'big' changed while being"):
        b"".join(chunks)


def test_a_file_that_grows_while_read_raises(tmp_path: Path) -> None:
    big = write(tmp_path / "big", bytes(100_000))
    stream = iter(pack_dir(tmp_path, chunk_size=4096))
    next(stream)
    with open(big, "ab") as file:
        file.write(b"more")

    chunks: list[bytes] = []
    with pytest.raises(TarPipeError, match="'big' changed while being"):
        chunks.extend(stream)
    assert sum(map(len, chunks)) == 100_000  # no padding, no end blocks


def test_a_stream_reads_once(tree: Path) -> None:
    stream = pack_dir(tree)
    chunks = iter(stream)
    next(chunks)

    with pytest.raises(StreamConsumedError, match="already been read"):
        iter(stream)
    assert b"".join(chunks).endswith(END_OF_ARCHIVE)  # the first reader
    with pytest.raises(StreamConsumedError):
        b"".join(stream)


def test_next_on_the_stream_counts_as_reading_it(tree: Path) -> None:
    stream = pack_dir(tree)
    next(stream)

    assert next(stream)
    with pytest.raises(StreamConsumedError):
        list(stream)


def test_tar_stream_wraps_any_generator() -> None:
    stream = TarStream(chunk for chunk in (b"a", b"b"))
    assert list(stream) == [b"a", b"b", END_OF_ARCHIVE]
    with pytest.raises(StreamConsumedError):
        list(stream)


def test_closing_a_stream_closes_its_files(tmp_path: Path) -> None:
    write(tmp_path / "d" / "big", bytes(100_000))
    opened = len(os.listdir("/proc/self/fd"))
    stream = pack_dir(tmp_path, chunk_size=4096)
    next(stream)
    next(stream)
    assert len(os.listdir("/proc/self/fd")) > opened

    stream.close()
    assert len(os.listdir("/proc/self/fd")) == opened


# -- refusals -----------------------------------------------------------


def test_symlinks_are_refused_by_default(tmp_path: Path) -> None:
    write(tmp_path / "a" / "target.txt")
    os.symlink("target.txt", tmp_path / "a" / "link")

    with pytest.raises(UnsafeMemberError) as caught:
        b"".join(pack_dir(tmp_path))
    assert (caught.value.member, caught.value.rule) == (
        "a/link", "symlink not allowed")


def test_symlinks_are_packed_when_allowed(tmp_path: Path) -> None:
    os.symlink("../elsewhere", tmp_path / "link")
    os.utime(tmp_path / "link", ns=(0, 3 * NS + 4), follow_symlinks=False)
    record: dict[str, FileState] = {}

    [(info, _)] = read_members(pack_dir(tmp_path, symlinks=True,
                                        record=record))
    assert (info.name, info.issym(), info.linkname) == (
        "link", True, "../elsewhere")
    assert mtime_ns_of(info) == 3 * NS + 4
    assert record == {"link": FileState("symlink", 0o777, "../elsewhere",
                                        0, 3 * NS + 4)}


def test_a_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")

    with pytest.raises(UnsafeMemberError) as caught:
        b"".join(pack_dir(tmp_path))
    assert caught.value.member == "pipe"
    assert caught.value.rule == "special file not allowed"
    assert caught.value.detail == "FIFO"


def test_a_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    write(tmp_path / "outside" / "secret", b"s")
    (tmp_path / "tree").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "tree" / "in")

    with pytest.raises(UnsafeMemberError, match="'in'"):
        b"".join(pack_dir(tmp_path / "tree"))


def test_the_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        pack_dir(write(tmp_path / "file"))


# -- record -------------------------------------------------------------


def test_pack_dir_records_every_member(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    write(tmp_path / "d" / "f.bin", data, mode=0o640, mtime_ns=5)
    write(tmp_path / "e", mtime_ns=6)
    os.chmod(tmp_path / "d", 0o750)
    os.utime(tmp_path / "d", ns=(0, 7))
    record: dict[str, FileState] = {}

    b"".join(pack_dir(tmp_path, record=record, chunk_size=4096))
    assert record == {
        "d": FileState("directory", 0o750, "", 0, 7),
        "d/f.bin": file_state(data, mode=0o640, mtime_ns=5),
        "e": file_state(b"", mode=0o644, mtime_ns=6),
    }


def test_pack_files_records_every_member() -> None:
    record: dict[str, FileState] = {}
    files: Files = {"a/b.txt": "\u2603", "run.sh": b"#!/bin/sh\n"}

    b"".join(pack_files(files, mtime_ns=9, record=record))
    assert record == {
        "a": FileState("directory", 0o755, "", 0, 9),
        "a/b.txt": file_state("\u2603".encode(), mode=0o644, mtime_ns=9),
        "run.sh": file_state(b"#!/bin/sh\n", mode=0o755, mtime_ns=9),
    }
    assert record["run.sh"].digest == hashlib.sha256(b"#!/bin/sh\n").hexdigest()


# -- pack_files ---------------------------------------------------------


def test_pack_files_modes_and_parent_dirs() -> None:
    files = {"cyber-dojo.sh": "", "x/build.sh": "", "x/y/a.c": "",
             "keep.txt": ""}

    packed = pack_files(files, mtime_ns=-NS, mode=0o600, dir_mode=0o700,
                        modes={"keep.txt": 0o444, "x/build.sh": 0o700})
    members = [(i.name, i.type, i.mode, mtime_ns_of(i))
               for i, _ in read_members(packed)]
    assert members == [
        ("cyber-dojo.sh", tarfile.REGTYPE, 0o755, -NS),
        ("keep.txt", tarfile.REGTYPE, 0o444, -NS),
        ("x", tarfile.DIRTYPE, 0o700, -NS),
        ("x/build.sh", tarfile.REGTYPE, 0o700, -NS),
        ("x/y", tarfile.DIRTYPE, 0o700, -NS),
        ("x/y/a.c", tarfile.REGTYPE, 0o600, -NS),
    ]


def test_pack_files_contents_and_owner() -> None:
    big = os.urandom(200_000)
    files: Files = {"s.txt": "na\u00efve", "b.bin": big, "e": b""}

    members = by_name(read_members(pack_files(files, mtime_ns=0)))
    assert {n: d for n, (_, d) in members.items()} == {
        "s.txt": "na\u00efve".encode(), "b.bin": big, "e": b""}
    assert {(i.uid, i.uname) for i, _ in members.values()} == {
        (NOBODY.uid, NOBODY.uname)}


@pytest.mark.parametrize(("name", "rule"), [
    ("", "empty name"),
    ("/etc/passwd", "absolute path"),
    ("../escape", "'..' component"),
    ("a/../../b", "'..' component"),
    ("..", "'..' component"),
    ("./a", "'.' component"),
    ("a/./b", "'.' component"),
    ("a//b", "empty component"),
    ("a/", "trailing slash"),
    ("a\0b", "NUL in name"),
    ("\ud800", "name not encodable"),
    ("a" * 4097, "max_path_bytes exceeded"),
    ("\u00e9" * 2049, "max_path_bytes exceeded"),
    ("d/" + "a" * 256, "max_name_bytes exceeded"),
])
def test_pack_files_refuses_bad_names(name: str, rule: str) -> None:
    with pytest.raises(UnsafeMemberError) as caught:
        pack_files({"ok.txt": "", name: "x"}, mtime_ns=0)
    assert (caught.value.member, caught.value.rule) == (name, rule)


@pytest.mark.parametrize("name", ["a" * 255, "d/" * 2046 + "f",
                                  "back\\slash", " ", "...", ".hidden",
                                  "caf\u00e9", "x\udcff"])
def test_pack_files_accepts_unusual_good_names(name: str) -> None:
    [(info, data)] = [m for m in read_members(pack_files(
        {name: "x"}, mtime_ns=0)) if m[0].isfile()]
    assert (info.name, data) == (name, b"x")


def test_pack_files_refuses_a_file_that_is_also_a_directory() -> None:
    with pytest.raises(UnsafeMemberError) as caught:
        pack_files({"a/b": "", "a/b/c": ""}, mtime_ns=0)
    assert (caught.value.member, caught.value.rule) == (
        "a/b", "file is also a directory")


def test_length_limits_raise_limit_errors() -> None:
    with pytest.raises(LimitExceededError) as caught:
        pack_files({"a" * 256: ""}, mtime_ns=0)
    assert (caught.value.value, caught.value.allowed) == (256, 255)


@pytest.mark.parametrize("content", [None, 3, bytearray(b"x"), ["x"]])
def test_pack_files_refuses_other_contents(content: object) -> None:
    with pytest.raises(TypeError, match=r"'f\.txt'"):
        pack_files({"f.txt": content}, mtime_ns=0)  # type: ignore[dict-item]


def test_pack_files_refuses_non_str_names() -> None:
    with pytest.raises(TypeError, match="b'f'"):
        pack_files({b"f": b""}, mtime_ns=0)  # type: ignore[dict-item]


@pytest.mark.parametrize("kwargs", [
    {"mode": 0o1755}, {"dir_mode": -1}, {"modes": {"f": 0o10000}},
    {"modes": {"missing": 0o644}},
])
def test_pack_files_refuses_bad_modes(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        pack_files({"f": ""}, mtime_ns=0, **kwargs)  # type: ignore[arg-type]


def test_time_is_a_required_int() -> None:
    with pytest.raises(TypeError, match="mtime_ns"):
        pack_files({"f": ""}, mtime_ns=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("mtime_ns", [2**63 * NS, -(2**63 + 1) * NS])
def test_an_mtime_no_file_can_have_is_refused_at_once(tree: Path,
                                                       mtime_ns: int) -> None:
    with pytest.raises(ValueError, match="64-bit time_t"):
        pack_files({"f": ""}, mtime_ns=mtime_ns)
    with pytest.raises(ValueError, match="64-bit time_t"):
        pack_dir(tree, mtime_ns=mtime_ns)


def test_the_widest_mtimes_a_file_can_have_go_through() -> None:
    # The ends of a 64-bit time_t: the archive carries them, and they are
    # read back the same, though no file system here stores them.
    for mtime_ns in (2**63 * NS - 1, -(2**63) * NS):
        data = b"".join(pack_files({"f": ""}, mtime_ns=mtime_ns))
        assert {mtime_ns_of(info) for info, _ in read_members([data])} == {
            mtime_ns}


# -- interoperability with GNU tar -------------------------------------

needs_gnu_tar = pytest.mark.skipif(shutil.which("tar") is None,
                                   reason="no tar command on this host")


def gnu_tar(*args: str, stdin: bytes = b"") -> str:
    done = subprocess.run(["tar", *args], input=stdin, capture_output=True,
                          check=True, env={**os.environ, "TZ": "UTC0"})
    return done.stdout.decode("utf-8", "surrogateescape")


@needs_gnu_tar
def test_gnu_tar_extracts_exact_mtimes_modes_and_names(
        tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    names = [f"d{i}/{os.fsdecode(n)}" for i, n in enumerate(NAMES)]
    for i, (name, mtime) in enumerate(zip(names, MTIMES, strict=False)):
        write(source / name, name.encode("utf-8", "surrogateescape"),
              mtime_ns=mtime, mode=0o600 + i)
    set_dir_mtimes(source, 2**33 * NS + 123)
    target.mkdir()

    gnu_tar("-xf", "-", "-C", str(target),
            stdin=b"".join(pack_dir(source)))
    assert snapshot(target) == snapshot(source)


def snapshot(root: Path) -> dict[bytes, tuple[int, int, bytes]]:
    found = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            data = b""
            if not stat.S_ISDIR(info.st_mode):
                with open(path, "rb") as file:
                    data = file.read()
            key = os.path.relpath(path, os.fsencode(root))
            found[key] = (info.st_mtime_ns, stat.S_IMODE(info.st_mode), data)
    return found


@needs_gnu_tar
def test_gnu_tar_lists_nanosecond_mtimes(tmp_path: Path) -> None:
    write(tmp_path / "f", mtime_ns=1_700_000_000_123_456_789)
    listing = gnu_tar("--full-time", "-tvf", "-",
                      stdin=b"".join(pack_dir(tmp_path)))
    assert "2023-11-14 22:13:20.123456789 f" in listing


def test_concat_makes_one_archive_of_several_streams(tmp_path: Path) -> None:
    write(tmp_path / "kept.o", b"object")
    stream = concat(pack_dir(tmp_path),
                    pack_files({"new.c": b"int x;"}, mtime_ns=5))
    data = b"".join(stream)

    assert member_names(data) == ["kept.o", "new.c"]
    assert data.endswith(END_OF_ARCHIVE) and data.count(END_OF_ARCHIVE) == 1
    with pytest.raises(StreamConsumedError):
        concat(stream)


def test_retar_can_put_every_member_in_a_folder() -> None:
    source = pack_files({"a/b.c": b"1", "d.txt": b"2"}, mtime_ns=7)
    record: dict[str, FileState] = {}
    data = b"".join(retar(source, owner=NOBODY, prefix="s.1/", record=record))

    assert member_names(data) == ["s.1/a", "s.1/a/b.c", "s.1/d.txt"]
    assert set(record) == {"a", "a/b.c", "d.txt"}


@pytest.mark.parametrize("prefix", ["/abs/", "no-slash", "../up/", "a//b/"])
def test_retar_refuses_a_prefix_that_is_not_a_plain_folder(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        retar(pack_files({}, mtime_ns=0), owner=NOBODY, prefix=prefix)


def member_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        return [member.name for member in archive]


def test_concat_makes_a_later_stream_when_the_earlier_ones_are_read() -> None:
    record: dict[str, FileState] = {}
    first = pack_files({"a": b"1", "b": b"2"}, mtime_ns=1, record=record)
    stream = concat(first, lambda: pack_files(
        {"seen": ",".join(sorted(record)).encode()}, mtime_ns=1))

    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        contents = {m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
                    for m in archive}
    assert contents["seen"] == b"a,b"


# -- retar that leaves out what the reader has -------------------------


def record_of(files: Mapping[str, bytes | str], mtime_ns: int) -> dict[str, FileState]:
    record: dict[str, FileState] = {}
    b"".join(pack_files(files, mtime_ns=mtime_ns, record=record))
    return record


def test_retar_leaves_out_exactly_the_files_the_reader_has_as_they_are(
) -> None:
    old = {"same.o": b"obj", "a/same.c": b"c", "edited.c": b"old",
           "touched.c": b"t", "gone.c": b"g", "big": bytes(100_000)}
    new = {"same.o": b"obj", "a/same.c": b"c", "edited.c": b"new",
           "touched.c": b"t", "made.c": b"m", "big": bytes(100_000)}
    already = record_of(old, 5)
    source = concat(pack_files({k: v for k, v in new.items()
                                if k != "touched.c"}, mtime_ns=5),
                    pack_files({"touched.c": b"t"}, mtime_ns=6))
    record: dict[str, FileState] = {}
    left_out: set[str] = set()

    data = b"".join(retar(source, owner=NOBODY, prefix="s.2/",
                          record=record, already_there=already,
                          left_out=left_out))

    assert left_out == {"same.o", "a/same.c", "big"}
    assert member_names(data) == ["s.2/a", "s.2/edited.c", "s.2/made.c",
                                  "s.2/touched.c"]
    assert set(record) == set(new) | {"a"}
    assert record["same.o"] == already["same.o"]


def test_retar_sends_a_file_whose_bytes_changed_behind_the_same_mtime(
) -> None:
    already = record_of({"x.o": b"one"}, 9)
    left_out: set[str] = set()

    data = b"".join(retar(pack_files({"x.o": b"two"}, mtime_ns=9),
                          owner=NOBODY, already_there=already,
                          left_out=left_out))

    assert left_out == set()
    assert by_name(read_members([data]))["x.o"][1] == b"two"


def test_retar_sends_a_file_whose_mode_changed() -> None:
    already = record_of({"run": b"x"}, 9)
    left_out: set[str] = set()
    source = pack_files({"run": b"x"}, mtime_ns=9, modes={"run": 0o755})

    data = b"".join(retar(source, owner=NOBODY, already_there=already,
                          left_out=left_out))

    assert (left_out, member_names(data)) == (set(), ["run"])


def test_retar_leaves_out_a_hard_link_to_a_file_left_out() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) \
            as archive:
        for name, target in [("a.o", ""), ("b.o", "a.o"), ("c.o", ""),
                             ("d.o", "c.o")]:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 3, 0o644
            if target:
                info.type, info.linkname = tarfile.LNKTYPE, target
                archive.addfile(info)
            else:
                info.size = 1
                archive.addfile(info, io.BytesIO(name[:1].upper().encode()))
    already = {"a.o": FileState("file", 0o644, hashlib.sha256(b"A")
                                .hexdigest(), 1, 3 * NS)}
    left_out: set[str] = set()
    record: dict[str, FileState] = {}

    data = b"".join(retar([buffer.getvalue()], owner=NOBODY,
                          allow_links=True, already_there=already,
                          left_out=left_out, record=record))

    assert left_out == {"a.o", "b.o"}
    assert member_names(data) == ["c.o", "d.o"]
    assert record["b.o"].kind == "hardlink" and record["b.o"].digest == "a.o"


def test_pack_directories_gives_each_folder_its_mode_and_exact_mtime(
) -> None:
    record = {"a": FileState("directory", 0o750, "", 0, 1_700_000_000_123_456_789),
              "a/b": FileState("directory", 0o700, "", 0, -1),
              "a/f": FileState("file", 0o644, "x", 1, 5)}

    members = read_members(pack_directories(record, owner=NOBODY,
                                            prefix="s.3/"))

    assert [(info.name, info.isdir(), info.mode, mtime_ns_of(info))
            for info, _ in members] == [
        ("s.3/a", True, 0o750, 1_700_000_000_123_456_789),
        ("s.3/a/b", True, 0o700, -1)]
