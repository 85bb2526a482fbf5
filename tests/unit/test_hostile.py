"""Hostile archives: every one refused, nothing written outside, no trace.

Each case is raw tar bytes built here with `tarfile` (or by hand), the
member and rule the refusal must name, and the settings it needs.  Every
case goes through `unpack_into` without and with `replace`, and through
`retar`.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tarpipe._header import END_OF_ARCHIVE, format_mtime, padding
from tarpipe.errors import LimitExceededError, TarPipeError, UnsafeMemberError
from tarpipe.limits import Limits
from tarpipe.owner import NOBODY
from tarpipe.retar import retar
from tarpipe.unpack import unpack_into

GiB = 1024**3
Format = Literal[0, 1, 2]  # tarfile's USTAR, GNU and PAX formats
MTIME_NS = 1_700_000_000_123_456_789


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *,
           mode: int = 0o644, linkname: str = "", size: int | None = None,
           pax: dict[str, str] | None = None,
           fmt: Format = tarfile.PAX_FORMAT) -> bytes:
    """The bytes of one member: header(s), data and padding."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    info.size = len(data) if size is None else size
    info.mtime = MTIME_NS // 10**9
    if fmt == tarfile.PAX_FORMAT:
        info.pax_headers = {"mtime": format_mtime(MTIME_NS), **(pax or {})}
    header = info.tobuf(fmt, "utf-8", "surrogateescape")
    return header + data + padding(len(data))


def far_mtime_gnu(name: str) -> bytes:
    """A GNU member whose base-256 mtime is 2**70 s: past any time_t."""
    info = tarfile.TarInfo(name)
    info.mtime = 2**70
    return info.tobuf(tarfile.GNU_FORMAT)


def archive(*members: bytes) -> bytes:
    return b"".join(members) + END_OF_ARCHIVE


def file(name: str, data: bytes = b"data\n", *, mode: int = 0o644,
         size: int | None = None, pax: dict[str, str] | None = None,
         fmt: Format = tarfile.PAX_FORMAT) -> bytes:
    return member(name, tarfile.REGTYPE, data, mode=mode, size=size, pax=pax,
                  fmt=fmt)


def directory(name: str, mode: int = 0o755) -> bytes:
    return member(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> bytes:
    return member(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> bytes:
    return member(name, tarfile.LNKTYPE, linkname=target)


def giant_header(kind: bytes) -> bytes:
    """An extended header declaring 10 GiB, followed by a little data."""
    info = tarfile.TarInfo("././@LongLink")
    info.type = kind
    info.size = 10 * GiB
    return info.tobuf(tarfile.GNU_FORMAT) + b"9 a=b\n".ljust(4096, b"x")


def gnu_sparse(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 512
    return info.tobuf(tarfile.GNU_FORMAT) + bytes(512) + END_OF_ARCHIVE


def pax_sparse_10(name: str) -> bytes:
    pax = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
           "GNU.sparse.name": name, "GNU.sparse.realsize": "4096"}
    sparse_map = b"1\n0\n5\n".ljust(512, b"\0")
    return archive(member("GNUSparseFile.0/sp", data=sparse_map + b"hello",
                          pax=pax))


def corrupt_second_header() -> bytes:
    data = bytearray(archive(file("a"), file("b")))
    second = len(file("a"))
    data[second + 148] ^= 0x01  # the checksum field
    return bytes(data)


def extended_headers_in_a_row(count: int) -> bytes:
    one = tarfile.TarInfo.create_pax_global_header({"comment": "x"})
    return b"".join([one] * count) + archive(file("a"))


@dataclass(frozen=True)
class Case:
    """A hostile archive and the refusal it must meet."""

    id: str
    data: bytes
    rule: str
    member: str | None
    allow_links: bool = False
    limits: Limits = field(default_factory=Limits)
    # Refused only against what the destination already holds.
    dest_only: bool = False


TWO_FILES = archive(file("a", b"x" * 600), file("b", b"y" * 600))
CASES = [
    Case("absolute path", archive(file("/tmp/tarpipe-hostile/evil")),
         "absolute path", "/tmp/tarpipe-hostile/evil"),
    Case("dotdot", archive(file("../x")), "'..' component", "../x"),
    Case("dotdot inside", archive(file("a/../../x")), "'..' component",
         "a/../../x"),
    Case("dotdot that stays inside", archive(file("a/../b")),
         "'..' component", "a/../b"),
    # Names that are not UTF-8 travel as their bytes (surrogate escapes
    # here); the rules still see the components between them.
    Case("non-UTF-8 name with dotdot", archive(file("\udcff/../x")),
         "'..' component", "\udcff/../x"),
    Case("non-UTF-8 absolute path", archive(file("/\udcfe\udcff")),
         "absolute path", "/\udcfe\udcff"),
    Case("non-UTF-8 GNU long name with dotdot",
         archive(file("\udcc0" * 120 + "/../x", fmt=tarfile.GNU_FORMAT)),
         "'..' component", "\udcc0" * 120 + "/../x"),
    Case("PAX path override", archive(file("x", pax={"path": "../x"})),
         "'..' component", "../x"),
    Case("PAX path of a slash", archive(file("x", pax={"path": "/"})),
         "empty name", ""),
    Case("empty name", archive(file("")), "empty name", ""),
    Case("dot file", archive(file(".")), "name is the destination itself",
         "."),
    Case("NUL in name", archive(file("x", pax={"path": "a\0b"})),
         "NUL in name", "a\0b"),
    Case("symlink not allowed", archive(symlink("s", "t")),
         "symlink not allowed", "s"),
    Case("hard link not allowed", archive(file("f"), hardlink("h", "f")),
         "hard link not allowed", "h"),
    Case("symlink to /etc/passwd", archive(symlink("s", "/etc/passwd")),
         "absolute link target", "s", allow_links=True),
    Case("symlink to ../..", archive(symlink("s", "../..")),
         "link leaves the destination", "s", allow_links=True),
    Case("symlink climbing from a subdirectory",
         archive(directory("d"), symlink("d/s", "../../outside")),
         "link leaves the destination", "d/s", allow_links=True),
    Case("symlink then a file through it",
         archive(directory("d"), symlink("s", "d"), file("s/x")),
         "path passes through a symlink", "s/x", allow_links=True),
    Case("symlink then a directory through it",
         archive(symlink("s", "."), directory("s/d")),
         "path passes through a symlink", "s/d", allow_links=True),
    Case("symlink NUL target",
         archive(member("t", tarfile.SYMTYPE, pax={"linkpath": "a\0b"})),
         "NUL in link target", "t", allow_links=True),
    Case("link chain escaping",
         archive(directory("a"), directory("a/b"), symlink("a/b/up", ".."),
                 symlink("x", "a/b/up/../..")),
         "'..' after a name in link target", "x", allow_links=True),
    Case("link chain of two escaping",
         archive(symlink("l1", "l2"), symlink("l2", "../outside")),
         "link leaves the destination", "l2", allow_links=True),
    Case("hard link to outside", archive(hardlink("h", "../outside/secret")),
         "'..' in link target", "h", allow_links=True),
    Case("hard link to an absolute path",
         archive(hardlink("h", "/etc/passwd")),
         "absolute link target", "h", allow_links=True),
    Case("hard link to a later name",
         archive(hardlink("h", "later"), file("later")),
         "hard link target not earlier in the archive", "h", allow_links=True),
    Case("hard link to a directory",
         archive(directory("d"), hardlink("h", "d")),
         "hard link target not a file", "h", allow_links=True),
    Case("character device", archive(member("tty", tarfile.CHRTYPE)),
         "special file not allowed", "tty"),
    Case("block device", archive(member("sda", tarfile.BLKTYPE)),
         "special file not allowed", "sda"),
    Case("FIFO", archive(member("pipe", tarfile.FIFOTYPE)),
         "special file not allowed", "pipe"),
    Case("unknown type", archive(member("vol", b"V")),
         "unsupported member type", "vol"),
    Case("GNU sparse", gnu_sparse("sp"), "sparse member", "sp"),
    Case("PAX sparse 1.0", pax_sparse_10("sp"), "sparse member", "sp"),
    Case("PAX sparse 0.1",
         archive(file("sp", pax={"GNU.sparse.map": "0,4"})),
         "sparse member", "sp"),
    Case("file replaces a directory", archive(directory("d"), file("d")),
         "file replaces a directory", "d"),
    Case("file replaces an implied directory",
         archive(file("d/x"), file("d")),
         "file replaces a directory", "d"),
    Case("directory replaces a file", archive(file("f"), directory("f")),
         "directory replaces a file", "f"),
    Case("symlink replaces a directory",
         archive(directory("d"), symlink("d", "e")),
         "symlink replaces a directory", "d", allow_links=True),
    Case("duplicate name", archive(file("f"), file("f")),
         "duplicate name", "f"),
    Case("path through a file", archive(file("f"), file("f/x")),
         "path passes through a file", "f/x"),
    Case("giant declared size", archive(file("big", size=10 * GiB)),
         "max_file_bytes exceeded", "big"),
    Case("giant base-256 size",
         archive(file("big", size=10 * GiB, fmt=tarfile.GNU_FORMAT)),
         "max_file_bytes exceeded", "big"),
    Case("negative size", archive(file("neg", size=-1,
                                       fmt=tarfile.GNU_FORMAT)),
         "negative size", "neg"),
    Case("total size", TWO_FILES, "max_total_bytes exceeded", "b",
         limits=Limits(max_total_bytes=1000)),
    Case("giant PAX header", giant_header(tarfile.XHDTYPE),
         "max_pax_header_bytes exceeded", "././@LongLink"),
    Case("giant GNU long name", giant_header(tarfile.GNUTYPE_LONGNAME),
         "max_pax_header_bytes exceeded", "././@LongLink"),
    Case("extended headers without end", extended_headers_in_a_row(9),
         "extended headers in a row", "././@PaxHeader"),
    Case("truncated in the first header", archive(file("a"))[:700],
         "truncated", None),
    Case("truncated mid-header", TWO_FILES[:len(file("a", b"x" * 600))
                                           + 1000],
         "truncated", "a"),
    Case("truncated mid-data", TWO_FILES[:len(file("a", b"x" * 600)) - 700],
         "truncated", "a"),
    Case("truncated before the end blocks", TWO_FILES[:-len(END_OF_ARCHIVE)],
         "truncated", "b"),
    Case("empty stream", b"", "truncated", None),
    Case("PAX mtime past time_t", archive(file("t", pax={"mtime": "1" * 20})),
         "outside what a file can have", "t"),
    Case("PAX mtime before time_t",
         archive(file("t", pax={"mtime": "-9223372036854775809.5"})),
         "outside what a file can have", "t"),
    Case("PAX mtime of 60,000 digits",
         archive(file("t", pax={"mtime": "9" * 60_000})),
         "outside what a file can have", "t"),
    Case("base-256 mtime past time_t", archive(far_mtime_gnu("t")),
         "outside what a file can have", "t"),
    Case("corrupt header", corrupt_second_header(), "corrupt", "a"),
    Case("too many members", archive(*(file(f"f{i}") for i in range(4))),
         "max_members exceeded", "f3", limits=Limits(max_members=3)),
    Case("too many implied directories", archive(file("a/b/c/d")),
         "max_members exceeded", "a/b/c/d", limits=Limits(max_members=3)),
    Case("too long component", archive(file("n" * 256)),
         "max_name_bytes exceeded", "n" * 256),
    Case("too long path", archive(file("/".join(["d" * 200] * 21))),
         "max_path_bytes exceeded", "/".join(["d" * 200] * 21)),
    Case("symlink in the destination",
         archive(file("link/planted")),
         "path passes through a symlink", "link/planted", dest_only=True),
    Case("file in the destination",
         archive(file("keep.txt/x")),
         "path passes through a file", "keep.txt/x", dest_only=True),
    Case("symlink through one in the destination",
         archive(symlink("s", "link/secret")),
         "refused by tarfile.data_filter", "s", allow_links=True,
         dest_only=True),
]


def test_the_table_is_big_and_distinct() -> None:
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({case.data for case in CASES}) == len(CASES)


@pytest.fixture
def land(tmp_path: Path) -> Path:
    """A destination with a sibling `outside` it must never reach."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_bytes(b"keep\n")
    (dest / "sub").mkdir()
    (dest / "sub" / "old.c").write_bytes(b"int main;\n")
    (dest / "link").symlink_to("../outside")
    os.utime(dest / "sub", ns=(MTIME_NS, MTIME_NS))
    return tmp_path


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `top` (itself included), never following links."""
    found: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(top):
        for name in [".", *dirs, *files]:
            path = Path(folder, name)
            info = path.lstat()
            found[str(path.relative_to(top))] = (
                stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                info.st_mtime_ns, _content(path, info.st_mode))
    return found


def _content(path: Path, mode: int) -> bytes | str:
    if stat.S_ISLNK(mode):
        return os.readlink(path)
    return path.read_bytes() if stat.S_ISREG(mode) else b""


def outside_of_dest(land: Path) -> dict[str, tuple[object, ...]]:
    """The snapshot of `land` but dest, and the lock file beside it.

    `land` itself is left out too: its mtime moves when the lock file and
    staging directories come and go.
    """
    skip = {".", "dest", ".dest.tarpipe.lock"}
    return {path: value for path, value in snapshot(land).items()
            if path not in skip and not path.startswith("dest/")}


def staging_left(land: Path) -> list[str]:
    return [name for name in os.listdir(land)
            if name.startswith(".dest.tarpipe-")]


def assert_names(error: TarPipeError, case: Case) -> None:
    text = str(error)
    assert case.rule in text
    if case.member is not None:
        assert repr(case.member) in text


def cases(*, with_dest: bool) -> list[object]:
    return [pytest.param(case, id=case.id) for case in CASES
            if with_dest or not case.dest_only]


@pytest.mark.parametrize("case", cases(with_dest=True))
def test_unpack_refuses_and_stays_inside(case: Case, land: Path) -> None:
    before = outside_of_dest(land)

    with pytest.raises(TarPipeError) as caught:
        unpack_into([case.data], land / "dest", limits=case.limits,
                    allow_links=case.allow_links)

    assert_names(caught.value, case)
    assert outside_of_dest(land) == before


@pytest.mark.parametrize("case", cases(with_dest=False))
def test_replace_refuses_and_leaves_dest_as_it_was(case: Case,
                                                   land: Path) -> None:
    before = snapshot(land / "dest"), outside_of_dest(land)

    with pytest.raises(TarPipeError) as caught:
        unpack_into([case.data], land / "dest", limits=case.limits,
                    allow_links=case.allow_links, replace=True)

    assert_names(caught.value, case)
    assert (snapshot(land / "dest"), outside_of_dest(land)) == before
    assert staging_left(land) == []


@pytest.mark.parametrize("case", cases(with_dest=False))
def test_retar_refuses(case: Case) -> None:
    with pytest.raises(TarPipeError) as caught:
        for _ in retar([case.data], owner=NOBODY, limits=case.limits,
                       allow_links=case.allow_links):
            pass

    assert_names(caught.value, case)


def test_limit_errors_carry_the_limit() -> None:
    data = archive(file("big", size=10 * GiB))

    with pytest.raises(LimitExceededError) as caught:
        list(retar([data], owner=NOBODY))

    assert (caught.value.limit, caught.value.value) == (
        "max_file_bytes", 10 * GiB)
    assert caught.value.allowed == Limits().max_file_bytes


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                                  tarfile.GNUTYPE_LONGLINK])
def test_giant_header_is_refused_before_it_is_read(kind: bytes,
                                                   tmp_path: Path) -> None:
    """A header declaring 10 GiB is refused before its data is read.

    (Read, 64 MiB of it would be in memory, then the stream would end.)
    """
    pulled = 0

    def endless() -> Iterator[bytes]:
        nonlocal pulled
        yield giant_header(kind)[:512]
        chunk = b"x" * 65536
        while pulled < 64 * 2**20:
            pulled += len(chunk)
            yield chunk

    with pytest.raises(LimitExceededError, match="max_pax_header_bytes"):
        unpack_into(endless(), tmp_path / "dest")

    assert pulled <= 65536


def test_setuid_setgid_sticky_are_cleared_not_refused(tmp_path: Path) -> None:
    data = archive(directory("d", mode=0o1755),
                   file("d/suid", mode=0o4755), file("d/sgid", mode=0o2770),
                   file("d/open", mode=0o666))
    record = unpack_into([data], tmp_path / "dest")
    dest = tmp_path / "dest"

    modes = {name: stat.S_IMODE((dest / name).stat().st_mode)
             for name in ("d", "d/suid", "d/sgid", "d/open")}
    assert modes == {"d": 0o755, "d/suid": 0o755, "d/sgid": 0o770,
                     "d/open": 0o666}
    assert {name: state.mode for name, state in record.items()} == modes


def test_refusal_is_an_unsafe_member_error_with_its_parts(
        tmp_path: Path) -> None:
    with pytest.raises(UnsafeMemberError) as caught:
        unpack_into([archive(file("../x"))], tmp_path / "dest")

    assert (caught.value.member, caught.value.rule) == ("../x",
                                                        "'..' component")


class HundredThousandMembers:
    """100,000 one-byte files under `m/`, made as they are read.

    Never held whole (it is 100 MB); `made` counts the members handed
    out, to show a refusal comes without reading the rest.
    """

    count = 100_000

    def __init__(self) -> None:
        self.made = 0

    def __iter__(self) -> Iterator[bytes]:
        for number in range(self.count):
            info = tarfile.TarInfo(f"m/{number:06d}")
            info.size = 1
            info.mtime = MTIME_NS // 10**9
            self.made += 1
            yield info.tobuf(tarfile.USTAR_FORMAT) + b"x" + padding(1)
        yield END_OF_ARCHIVE


@pytest.mark.parametrize("replace", [False, True])
def test_a_hundred_thousand_members_are_refused_at_the_limit(
        land: Path, replace: bool) -> None:
    limit = Limits().max_members
    members = HundredThousandMembers()
    before = snapshot(land / "dest"), outside_of_dest(land)

    with pytest.raises(LimitExceededError,
                       match="max_members exceeded") as caught:
        unpack_into(members, land / "dest", replace=replace)

    assert caught.value.member is not None
    assert caught.value.member.startswith("m/")
    # Refused at the limit (the folder `m` counts as one), not at the end.
    assert limit - 1 <= members.made <= limit + 100
    assert outside_of_dest(land) == before[1]
    if replace:
        assert snapshot(land / "dest") == before[0]
        assert staging_left(land) == []


def test_retar_refuses_a_hundred_thousand_members_at_the_limit() -> None:
    members = HundredThousandMembers()

    with pytest.raises(LimitExceededError, match="max_members exceeded"):
        for _ in retar(members, owner=NOBODY):
            pass

    assert members.made <= Limits().max_members + 100


def test_an_overlong_dotdot_is_a_name_not_a_way_out(land: Path) -> None:
    # 0xC0 0xAE is an overlong (invalid) UTF-8 '.': to the kernel these
    # are just bytes, a folder of that name inside the destination.
    name = os.fsdecode(b"\xc0\xae\xc0\xae") + "/x"
    before = outside_of_dest(land)

    unpack_into([archive(file(name))], land / "dest")

    assert os.listdir(os.fsencode(land / "dest" / os.fsdecode(
        b"\xc0\xae\xc0\xae"))) == [b"x"]
    assert outside_of_dest(land) == before
