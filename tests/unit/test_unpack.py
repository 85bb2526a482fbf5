"""unpack_into and retar: exact metadata, owners, limits, replace, record."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tarpipe import swap
from tarpipe._header import format_mtime, mtime_ns_of
from tarpipe._reader import open_source
from tarpipe._stream import TarStream
from tarpipe.errors import (
    ArchiveError,
    LimitExceededError,
    StreamConsumedError,
    SwapError,
    UnsafeMemberError,
)
from tarpipe.filediff import FileState, file_state
from tarpipe.limits import Limits
from tarpipe.owner import NOBODY, Owner
from tarpipe.pack import pack_dir, pack_files
from tarpipe.retar import retar
from tarpipe.unpack import unpack_into
from tests.unit.test_hostile import snapshot

NS = 1_000_000_000
T1 = 1_700_000_000_123_456_789
MTIMES = [T1, 0, -1_500_000_000, 2**33 * NS + 999_999_999, 5 * NS + 1]
ROOT = os.geteuid() == 0
ARCHIVE_IDS = (4321, 8765)

Entry = tuple[tarfile.TarInfo, bytes]


def entry(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE,
          mode: int = 0o644, mtime_ns: int = T1,
          linkname: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.uid, info.gid = ARCHIVE_IDS
    info.uname, info.gname = "archive", "archive"
    info.mtime = max(0, mtime_ns // NS)
    info.pax_headers = {"mtime": format_mtime(mtime_ns)}
    return info, data


def tar_bytes(*entries: Entry) -> bytes:
    """An archive as `tarfile` writes it (PAX, padded to a record)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def directory(name: str, *, mode: int = 0o755, mtime_ns: int = T1) -> Entry:
    return entry(name, kind=tarfile.DIRTYPE, mode=mode, mtime_ns=mtime_ns)


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE,
         mtime_ns: int = T1) -> Entry:
    return entry(name, kind=kind, mode=0o777, linkname=target,
                 mtime_ns=mtime_ns)


def state(path: Path) -> tuple[int, int, int]:
    """Mode, mtime and size of `path`, not following a symlink."""
    info = path.lstat()
    return stat.S_IMODE(info.st_mode), info.st_mtime_ns, info.st_size


SANDBOX = [
    directory("src", mode=0o750, mtime_ns=MTIMES[1]),
    entry("src/hiker.c", b"int answer;\n", mode=0o640, mtime_ns=MTIMES[0]),
    entry("src/empty.h", b"", mode=0o600, mtime_ns=MTIMES[2]),
    entry("cyber-dojo.sh", b"make\n", mode=0o755, mtime_ns=MTIMES[3]),
    directory("build", mode=0o700, mtime_ns=MTIMES[4]),
    directory("src/deep", mtime_ns=MTIMES[2]),
    entry("src/deep/x.o", os.urandom(200_000), mode=0o664),
]


# -- exact metadata -----------------------------------------------------


def test_files_and_directories_get_exact_modes_and_ns_mtimes(
        tmp_path: Path) -> None:
    unpack_into([tar_bytes(*SANDBOX)], tmp_path / "dest")

    for info, data in SANDBOX:
        path = tmp_path / "dest" / info.name
        assert state(path) == (info.mode, mtime_ns_of(info),
                               path.stat().st_size)
        if info.isreg():
            assert path.read_bytes() == data
    assert sorted(os.listdir(tmp_path / "dest" / "build")) == []


def test_directory_mtime_is_set_after_its_contents(tmp_path: Path) -> None:
    # The directory's member first, then entries that would move its mtime.
    members = [directory("d", mtime_ns=MTIMES[2]),
               entry("d/a"), directory("d/e", mtime_ns=MTIMES[4]),
               entry("d/e/b")]
    unpack_into([tar_bytes(*members)], tmp_path / "dest")

    assert (tmp_path / "dest/d").lstat().st_mtime_ns == MTIMES[2]
    assert (tmp_path / "dest/d/e").lstat().st_mtime_ns == MTIMES[4]


def test_a_directory_member_after_its_contents(tmp_path: Path) -> None:
    members = [entry("d/a"), directory("d", mode=0o701, mtime_ns=MTIMES[3])]
    unpack_into([tar_bytes(*members)], tmp_path / "dest")

    assert state(tmp_path / "dest/d")[:2] == (0o701, MTIMES[3])


def test_links_get_their_targets_and_mtimes(tmp_path: Path) -> None:
    members = [entry("f", b"content", mode=0o640, mtime_ns=MTIMES[0]),
               link("s", "f", mtime_ns=MTIMES[2]),
               link("d/up", "../f", mtime_ns=MTIMES[3]),
               link("h", "f", tarfile.LNKTYPE, mtime_ns=MTIMES[4])]
    record = unpack_into([tar_bytes(*members)], tmp_path / "dest",
                         allow_links=True)
    dest = tmp_path / "dest"

    assert os.readlink(dest / "s") == "f"
    assert (dest / "d/up").read_bytes() == b"content"
    assert dest.joinpath("s").lstat().st_mtime_ns == MTIMES[2]
    assert dest.joinpath("d/up").lstat().st_mtime_ns == MTIMES[3]
    assert (dest / "h").stat().st_ino == (dest / "f").stat().st_ino
    assert state(dest / "h")[:2] == (0o640, MTIMES[0])
    assert record["s"] == FileState("symlink", 0o777, "f", 0, MTIMES[2])
    assert record["h"] == FileState("hardlink", 0o777, "f", 0, MTIMES[4])


def test_gnu_tar_names_are_accepted(tmp_path: Path) -> None:
    """`tar -c .` writes `./` for the top, and `./name` for the rest."""
    members = [directory("./", mode=0o700), entry("./a", b"1"),
               directory("./d/"), entry("./d//b", b"2")]
    record = unpack_into([tar_bytes(*members)], tmp_path / "dest")

    assert sorted(record) == ["a", "d", "d/b"]
    assert (tmp_path / "dest/d/b").read_bytes() == b"2"
    assert stat.S_IMODE((tmp_path / "dest").stat().st_mode) != 0o700


# -- owners -------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="only root can give files away")
def test_as_root_everything_goes_to_the_owner(tmp_path: Path) -> None:
    members = [*SANDBOX, entry("new/dir/f"), link("s", "cyber-dojo.sh")]
    unpack_into([tar_bytes(*members)], tmp_path / "dest",
                owner=Owner(1234, 5678), allow_links=True)

    ids = {(info.st_uid, info.st_gid) for info in _lstats(tmp_path / "dest")}
    assert ids == {(1234, 5678)}


def test_without_owner_files_belong_to_the_caller(tmp_path: Path) -> None:
    unpack_into([tar_bytes(*SANDBOX)], tmp_path / "dest")

    ids = {(info.st_uid, info.st_gid) for info in _lstats(tmp_path / "dest")}
    assert ids == {(os.geteuid(), os.getegid())}
    assert ARCHIVE_IDS not in ids


@pytest.mark.skipif(not ROOT, reason="only root can give files away")
def test_replace_gives_a_new_top_to_the_owner(tmp_path: Path) -> None:
    unpack_into([tar_bytes(*SANDBOX)], tmp_path / "dest",
                owner=Owner(1234, 5678), replace=True)

    info = (tmp_path / "dest").stat()
    assert (info.st_uid, info.st_gid) == (1234, 5678)


def test_unprivileged_read_only_directories_are_rewritten_and_replaced(
        ) -> None:
    """As an ordinary user: modes that lock the owner out, and `owner`."""
    data = tar_bytes(directory("ro", mode=0o555),
                     entry("ro/f", b"1", mode=0o444),
                     directory("ro/locked", mode=0o000),
                     entry("ro/locked/g", b"2", mode=0o400))

    def job(work: Path) -> None:
        dest = work / "dest"
        unpack_into([data], dest, owner=Owner(1234, 5678))
        unpack_into([data], dest)
        unpack_into([data], dest, replace=True)
        assert state(dest / "ro/locked")[0] == 0o000
        unpack_into([tar_bytes(entry("x"))], dest, replace=True)
        assert os.listdir(dest) == ["x"]
        assert sorted(os.listdir(work)) == [".dest.tarpipe.lock", "dest"]
        assert (dest / "x").stat().st_uid == os.geteuid()

    run_unprivileged(job)


def run_unprivileged(job: Callable[[Path], None]) -> None:
    """`job(a fresh directory)`, as `nobody` in a child if we are root."""
    work = Path(tempfile.mkdtemp())
    try:
        if ROOT:
            os.chown(work, NOBODY.uid, NOBODY.gid)
            _in_child_as_nobody(job, work)
        else:
            job(work)
    finally:
        swap.remove_tree(str(work))


def _in_child_as_nobody(job: Callable[[Path], None], work: Path) -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY.gid)
            os.setuid(NOBODY.uid)
            job(work)
            status = 0
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert status == 0, report


def _lstats(top: Path) -> Iterator[os.stat_result]:
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            yield Path(folder, name).lstat()


# -- limits -------------------------------------------------------------


@pytest.mark.parametrize(("limits", "fits"), [
    (Limits(max_file_bytes=10), True),
    (Limits(max_file_bytes=9), False),
    (Limits(max_total_bytes=20), True),
    (Limits(max_total_bytes=19), False),
    (Limits(max_members=3), True),
    (Limits(max_members=2), False),
    (Limits(max_path_bytes=6), True),
    (Limits(max_path_bytes=5), False),
    (Limits(max_name_bytes=3), True),
    (Limits(max_name_bytes=2), False),
])
def test_limits_are_inclusive(limits: Limits, fits: bool,
                              tmp_path: Path) -> None:
    data = tar_bytes(directory("dd"), entry("dd/aaa", b"x" * 10),
                     entry("dd/bbb", b"y" * 10))
    if fits:
        unpack_into([data], tmp_path / "dest", limits=limits)
        assert (tmp_path / "dest/dd/bbb").read_bytes() == b"y" * 10
    else:
        with pytest.raises(LimitExceededError):
            unpack_into([data], tmp_path / "dest", limits=limits)


def test_pax_header_limit(tmp_path: Path) -> None:
    long_name = "n" * 200
    data = tar_bytes(entry(long_name))

    unpack_into([data], tmp_path / "a",
                limits=Limits(max_pax_header_bytes=512))
    with pytest.raises(LimitExceededError, match="max_pax_header_bytes"):
        unpack_into([data], tmp_path / "b",
                    limits=Limits(max_pax_header_bytes=100))


# -- replace ------------------------------------------------------------


@pytest.fixture
def old_dest(tmp_path: Path) -> Path:
    dest = tmp_path / "dest"
    unpack_into([tar_bytes(entry("keep"), entry("src/hiker.c", b"old"),
                           link("s", "keep"))], dest, allow_links=True)
    dest.chmod(0o711)
    return dest


def test_without_replace_members_replace_same_names_only(
        old_dest: Path) -> None:
    unpack_into([tar_bytes(entry("src/hiker.c", b"new"), entry("s", b"f"))],
                old_dest)

    assert (old_dest / "src/hiker.c").read_bytes() == b"new"
    assert (old_dest / "keep").exists()
    assert not (old_dest / "s").is_symlink()
    assert (old_dest / "keep").read_bytes() == b""


def test_a_file_never_replaces_a_directory_in_dest(old_dest: Path) -> None:
    with pytest.raises(UnsafeMemberError, match="file replaces a directory"):
        unpack_into([tar_bytes(entry("src"))], old_dest)

    assert (old_dest / "src/hiker.c").read_bytes() == b"old"


def test_a_directory_replaces_a_file_in_dest(old_dest: Path) -> None:
    unpack_into([tar_bytes(directory("keep"), entry("keep/x"))], old_dest)

    assert (old_dest / "keep/x").is_file()


def test_replace_leaves_exactly_the_new_tree(old_dest: Path,
                                              tmp_path: Path) -> None:
    unpack_into([tar_bytes(*SANDBOX)], tmp_path / "expected")

    unpack_into([tar_bytes(*SANDBOX)], old_dest, replace=True)

    assert _tree(old_dest) == _tree(tmp_path / "expected")
    assert stat.S_IMODE(old_dest.stat().st_mode) == 0o711
    assert sorted(os.listdir(tmp_path)) == [
        ".dest.tarpipe.lock", "dest", "expected"]


def test_replace_makes_a_missing_dest(tmp_path: Path) -> None:
    dest = tmp_path / "deeper" / "dest"
    unpack_into([tar_bytes(*SANDBOX)], dest, replace=True)

    assert (dest / "src/hiker.c").read_bytes() == b"int answer;\n"


def test_replace_swaps_the_target_of_a_symlinked_dest(old_dest: Path,
                                                      tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to("dest")
    unpack_into([tar_bytes(entry("new"))], tmp_path / "alias", replace=True)

    assert (tmp_path / "alias").is_symlink()
    assert sorted(os.listdir(old_dest)) == ["new"]


def test_an_error_from_the_source_leaves_dest_untouched(
        old_dest: Path, tmp_path: Path) -> None:
    before = snapshot(old_dest)
    data = tar_bytes(*SANDBOX)

    def failing() -> Iterator[bytes]:
        yield data[:5000]
        raise RuntimeError("the container went away")

    with pytest.raises(RuntimeError, match="went away"):
        unpack_into(failing(), old_dest, replace=True)

    assert snapshot(old_dest) == before
    assert swap.clean_leftovers(str(old_dest)) == []


def test_leftovers_of_a_killed_call_are_removed(old_dest: Path,
                                               tmp_path: Path) -> None:
    leftover = tmp_path / ".dest.tarpipe-new-killed1"
    (leftover / "half").mkdir(parents=True)
    (leftover / "half" / "f").write_bytes(b"x")
    (leftover / "half").chmod(0o500)
    unrelated = tmp_path / ".dest.other"
    unrelated.mkdir()

    unpack_into([tar_bytes(entry("new"))], old_dest, replace=True)

    assert not leftover.exists()
    assert unrelated.exists()


def test_leftovers_stay_while_another_call_runs(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    busy = swap.staging_dir(str(dest), "new")
    fd = os.open(tmp_path / ".dest.tarpipe.lock", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        unpack_into([tar_bytes(entry("f"))], dest, replace=True)
        assert os.path.isdir(busy)
        assert swap.clean_leftovers(str(dest)) == []
    finally:
        os.close(fd)
    assert swap.clean_leftovers(str(dest)) == [busy]


def test_exchange_across_file_systems_is_a_swap_error(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm") or (
            os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev):
        pytest.skip("needs /dev/shm on another file system")
    (tmp_path / "dest").mkdir()
    elsewhere = Path(swap.staging_dir("/dev/shm/tarpipe-test", "new"))
    try:
        with pytest.raises(SwapError, match="tarpipe-test"):
            swap.exchange(str(elsewhere), str(tmp_path / "dest"))
    finally:
        swap.remove_tree(str(elsewhere))


def test_the_raw_syscall_exchanges_too(tmp_path: Path) -> None:
    """The fallback for a C library without renameat2()."""
    rename = swap._renameat2_syscall(ctypes.CDLL(None, use_errno=True))
    if rename is None:
        pytest.skip("renameat2's number on this machine is not known")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").touch()
    (tmp_path / "b").mkdir()

    assert rename(bytes(tmp_path / "a"), bytes(tmp_path / "b"), 2) == 0

    assert (os.listdir(tmp_path / "a"), os.listdir(tmp_path / "b")) == (
        [], ["x"])


def _tree(top: Path) -> dict[str, tuple[object, ...]]:
    found = snapshot(top)
    del found["."]  # the top's mtime moves as staging goes in and out
    return found


# -- record -------------------------------------------------------------


def test_the_record_names_every_member_with_its_digest(
        tmp_path: Path) -> None:
    given: dict[str, FileState] = {}
    returned = unpack_into([tar_bytes(*SANDBOX)], tmp_path / "dest",
                           record=given)

    assert returned is given
    expected = {
        info.name: (file_state(data, mode=info.mode,
                               mtime_ns=mtime_ns_of(info))
                    if info.isreg() else
                    FileState("directory", info.mode, "", 0,
                              mtime_ns_of(info)))
        for info, data in SANDBOX}
    assert given == expected


def test_the_record_matches_the_packers_record(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {"a.c": b"x", "lib/b.h": b"yy",
                                     "cyber-dojo.sh": "make"}
    packed: dict[str, FileState] = {}
    stream = pack_files(files, mtime_ns=T1, record=packed)

    unpacked = unpack_into(stream, tmp_path / "dest", replace=True)

    assert unpacked == packed


def test_replace_fills_the_record_only_once_swapped(tmp_path: Path) -> None:
    record: dict[str, FileState] = {}
    data = tar_bytes(entry("a"), entry("a"))

    with pytest.raises(UnsafeMemberError, match="duplicate"):
        unpack_into([data], tmp_path / "dest", replace=True, record=record)

    assert record == {}


# -- sources ------------------------------------------------------------


def test_reads_the_bytes_of_a_whole_archive(tmp_path: Path) -> None:
    assert unpack_into(tar_bytes(entry("a")), tmp_path / "dest") == {
        "a": file_state(b"", mtime_ns=T1)}


def test_reads_from_a_file_object(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.tar"
    path.write_bytes(tar_bytes(*SANDBOX))
    with path.open("rb") as archive:
        record = unpack_into(archive, tmp_path / "dest")

    assert len(record) == len(SANDBOX)


@pytest.mark.parametrize("size", [1, 511, 512, 10240, 1 << 20])
def test_reads_from_chunks_of_any_size(size: int, tmp_path: Path) -> None:
    data = tar_bytes(*SANDBOX)
    chunks = (memoryview(data)[i:i + size] for i in range(0, len(data), size))

    record = unpack_into(chunks, tmp_path / "dest")

    assert record == unpack_into([data], tmp_path / "again")


def test_reading_stops_at_the_end_of_the_archive(tmp_path: Path) -> None:
    def then_forever() -> Iterator[bytes]:
        yield tar_bytes(entry("a", b"1"))
        while True:
            yield bytes(512)

    assert list(unpack_into(then_forever(), tmp_path / "dest")) == ["a"]


def test_the_reader_holds_one_chunk_at_most() -> None:
    pulled = []

    def chunks() -> Iterator[bytes]:
        for index in range(10):
            pulled.append(index)
            yield bytes(100)

    raw = open_source(chunks())
    assert raw.read(30) == bytes(30)
    assert raw.read(100) == bytes(70)
    assert pulled == [0]
    assert not raw.seekable()


def test_a_consumed_stream_is_refused_before_anything_is_made(
        tmp_path: Path) -> None:
    stream = pack_files({"a": b"1"}, mtime_ns=T1)
    unpack_into(stream, tmp_path / "first")

    with pytest.raises(StreamConsumedError):
        unpack_into(stream, tmp_path / "second")
    with pytest.raises(StreamConsumedError):
        retar(stream, owner=NOBODY)
    assert not (tmp_path / "second").exists()


def test_a_once_only_generator_stand_in(tmp_path: Path) -> None:
    stream = TarStream(iter([tar_bytes(entry("a"))]))  # type: ignore[arg-type]
    unpack_into(stream, tmp_path / "one")

    with pytest.raises(StreamConsumedError):
        unpack_into(stream, tmp_path / "two", replace=True)


def test_truncation_is_an_archive_error_naming_the_member(
        tmp_path: Path) -> None:
    data = tar_bytes(entry("big.o", os.urandom(100_000)))

    with pytest.raises(ArchiveError, match=r"'big\.o'") as caught:
        unpack_into([data[:50_000]], tmp_path / "dest")

    assert caught.value.member == "big.o"


# -- round trips --------------------------------------------------------


def test_pack_dir_then_unpack_gives_the_same_tree(tmp_path: Path) -> None:
    unpack_into([tar_bytes(*SANDBOX)], tmp_path / "one")

    unpack_into(pack_dir(tmp_path / "one"), tmp_path / "two")

    assert _tree(tmp_path / "two") == _tree(tmp_path / "one")


def test_retar_keeps_ns_mtimes_and_changes_the_owner() -> None:
    owner = Owner(1234, 5678, "cyber-dojo", "cyber-dojo")
    record: dict[str, FileState] = {}
    out = b"".join(retar([tar_bytes(*SANDBOX)], owner=owner, record=record))

    with tarfile.open(fileobj=io.BytesIO(out), mode="r|") as tar:
        seen = {info.name: (info, _data(tar, info)) for info in tar}
    assert list(seen) == [info.name for info, _ in SANDBOX]
    for info, data in SANDBOX:
        copy, copied = seen[info.name]
        assert (copy.mode, mtime_ns_of(copy), copied) == (
            info.mode, mtime_ns_of(info), data)
        assert (copy.uid, copy.gid, copy.uname, copy.gname) == (
            1234, 5678, "cyber-dojo", "cyber-dojo")
    assert record["src/deep/x.o"].digest == hashlib.sha256(
        SANDBOX[-1][1]).hexdigest()


def test_retar_is_idempotent_and_cleans_modes() -> None:
    members = [entry("suid", b"x", mode=0o4755), directory("./"),
               entry("./d/f", b"y", mode=0o1777)]
    once = b"".join(retar([tar_bytes(*members)], owner=NOBODY))
    twice = b"".join(retar([once], owner=NOBODY))

    assert twice == once
    with tarfile.open(fileobj=io.BytesIO(once), mode="r|") as tar:
        assert {info.name: info.mode for info in tar} == {
            "suid": 0o755, "d/f": 0o777}


def test_retar_then_unpack_equals_unpack(tmp_path: Path) -> None:
    data = tar_bytes(*SANDBOX, link("s", "src/hiker.c"),
                     link("h", "cyber-dojo.sh", tarfile.LNKTYPE))
    direct = unpack_into([data], tmp_path / "a", allow_links=True)

    via = unpack_into(retar([data], owner=NOBODY, allow_links=True),
                      tmp_path / "b", allow_links=True)

    assert via == direct
    assert _tree(tmp_path / "b") == _tree(tmp_path / "a")


def _data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    content = tar.extractfile(info)
    return content.read() if content else b""
