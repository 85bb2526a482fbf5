"""Tar headers with exact nanosecond mtimes.

`tarfile` keeps a member's mtime as a float, which cannot hold nanoseconds
(a 2024 mtime has 19 significant digits).  Here an mtime is an int of
nanoseconds everywhere, and travels as the text of a PAX `mtime` record,
written from and parsed into integers.
"""

from __future__ import annotations

import functools
import re
import tarfile
from enum import Enum

from .errors import ArchiveError
from .owner import Owner

BLOCK = 512
NS_PER_SECOND = 1_000_000_000
ENCODING = "utf-8"
# Names are str decoded with os.fsdecode(); undecodable bytes come back
# as surrogates and go out as the same bytes (PAX hdrcharset=BINARY).
ERRORS = "surrogateescape"

_MTIME_TEXT = re.compile(r"(-?)([0-9]+)(?:\.([0-9]*))?")
# The whole seconds a 64-bit time_t holds: a file cannot be stamped with
# an mtime outside them, so a member carrying one is refused when read.
_TIME_T_MIN = -(2**63)
_TIME_T_MAX = 2**63 - 1
_TIME_T_DIGITS = len(str(_TIME_T_MAX))
# What tarfile writes in the ustar block before a member's PAX records.
_NO_OWNER = Owner(0, 0)


class Kind(Enum):
    """The member types tarpipe writes."""

    FILE = tarfile.REGTYPE
    DIRECTORY = tarfile.DIRTYPE
    SYMLINK = tarfile.SYMTYPE
    HARDLINK = tarfile.LNKTYPE


def format_mtime(mtime_ns: int) -> str:
    """PAX `mtime` text for an int of nanoseconds, e.g. `'12.000000345'`.

    Whole seconds are written without a fraction; otherwise all nine
    digits are kept, so equal mtimes always give equal text.
    """
    sign = "-" if mtime_ns < 0 else ""
    seconds, nanos = divmod(abs(mtime_ns), NS_PER_SECOND)
    if nanos == 0:
        return f"{sign}{seconds}"
    return f"{sign}{seconds}.{nanos:09d}"


def parse_mtime(text: str, member: str | None = None) -> int:
    """Nanoseconds from PAX `mtime` text; digits past the ninth are dropped."""
    match = _MTIME_TEXT.fullmatch(text.strip())
    if match is None:
        raise ArchiveError(f"{_of(member)}bad PAX mtime {text!r}", member)
    sign, seconds, fraction = match.groups()
    # More digits than any time_t has: refused before int() is asked to
    # convert what may be 64 KiB of them.
    if len(seconds.lstrip("0")) > _TIME_T_DIGITS:
        raise _out_of_range(text.strip()[:40] + "...", member)
    nanos = int((fraction or "")[:9].ljust(9, "0"))
    value = int(seconds) * NS_PER_SECOND + nanos
    return _in_range(-value if sign else value, member)


def mtime_ns_of(member: tarfile.TarInfo) -> int:
    """A parsed member's mtime in nanoseconds, exact when PAX carried it.

    An mtime no file can have (outside a 64-bit time_t) is an
    `ArchiveError` naming the member.
    """
    text = member.pax_headers.get("mtime")
    if text is not None:
        return parse_mtime(text, member.name)
    return _in_range(int(member.mtime) * NS_PER_SECOND, member.name)


def fits_time_t(mtime_ns: int) -> bool:
    """Whether a file can have `mtime_ns`: its seconds fit a 64-bit time_t."""
    return _TIME_T_MIN <= mtime_ns // NS_PER_SECOND <= _TIME_T_MAX


def _in_range(mtime_ns: int, member: str | None) -> int:
    if not fits_time_t(mtime_ns):
        raise _out_of_range(format_mtime(mtime_ns), member)
    return mtime_ns


def _out_of_range(shown: str, member: str | None) -> ArchiveError:
    return ArchiveError(f"{_of(member)}mtime {shown} s is outside what a "
                        "file can have (a 64-bit time_t)", member)


def _of(member: str | None) -> str:
    return "" if member is None else f"member {member!r}: "


def member_header(
    name: str,
    kind: Kind,
    *,
    mode: int,
    mtime_ns: int,
    owner: Owner,
    size: int = 0,
    linkname: str = "",
) -> bytes:
    """The header blocks (PAX record then ustar) of one member.

    The result depends on its arguments only: no clock, no host lookups.
    """
    size = size if kind is Kind.FILE else 0
    header = _plain_header(name, kind, mode & 0o7777, mtime_ns, owner, size,
                           linkname)
    if header is None:
        header = _tarfile_header(name, kind, mode & 0o7777, mtime_ns, owner,
                                 size, linkname)
    return header


def _tarfile_header(name: str, kind: Kind, mode: int, mtime_ns: int,
                    owner: Owner, size: int, linkname: str) -> bytes:
    """The header as `tarfile` writes it, whatever the fields hold."""
    info = tarfile.TarInfo(name)
    info.type = kind.value
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.uid, info.gid = owner.uid, owner.gid
    info.uname, info.gname = owner.uname, owner.gname
    info.mtime = _ustar_seconds(mtime_ns)
    info.pax_headers = {"mtime": format_mtime(mtime_ns)}
    return info.tobuf(tarfile.PAX_FORMAT, ENCODING, ERRORS)


def _plain_header(name: str, kind: Kind, mode: int, mtime_ns: int,
                  owner: Owner, size: int, linkname: str) -> bytes | None:
    """The same bytes as `_tarfile_header`, in a fifth of the time.

    Only for what every sandbox member is: ASCII names and link targets
    that fit their ustar fields, ids and size in range, so the only PAX
    record is the mtime.  None for anything else.
    """
    if kind is Kind.DIRECTORY and not name.endswith("/"):
        name += "/"  # as tarfile does
    if not (_fits(name, 100) and _fits(linkname, 100)
            and _fits(owner.uname, 32) and _fits(owner.gname, 32)
            and owner.uid < 8**7 and owner.gid < 8**7
            and 0 <= size < 8**11):
        return None
    record = _pax_record(b"mtime", format_mtime(mtime_ns).encode())
    ustar = _ustar_block(name, kind.value, mode, owner, size,
                         _ustar_seconds(mtime_ns), linkname)
    return _pax_block(len(record)) + record + padding(len(record)) + ustar


def _fits(text: str, length: int) -> bool:
    return text.isascii() and len(text) <= length


def _ustar_seconds(mtime_ns: int) -> int:
    # The ustar field holds whole seconds (0 when out of its range); the
    # PAX record, which readers prefer, holds the exact value.
    return max(0, min(mtime_ns // NS_PER_SECOND, 8**11 - 1))


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    """`b"<length> <keyword>=<value>\\n"`, the length counting itself.

    The length is found as `tarfile` finds it, so the bytes agree even
    where adding its digits adds a digit.
    """
    rest = len(keyword) + len(value) + 3  # space, '=' and newline
    length = 0
    while length != rest + len(str(length)):
        length = rest + len(str(length))
    return b"%d %s=%s\n" % (length, keyword, value)


@functools.lru_cache(maxsize=64)
def _pax_block(size: int) -> bytes:
    """The ustar block before `size` bytes of PAX records."""
    return _ustar_block("././@PaxHeader", tarfile.XHDTYPE, 0, _NO_OWNER,
                        size, 0, "")


def _ustar_block(name: str, kind: bytes, mode: int, owner: Owner,
                 size: int, seconds: int, linkname: str) -> bytes:
    """One ustar header block; every field must fit as it is."""
    block = b"%s%07o\0%07o\0%07o\0%011o\0%011o\0        %s%s%s%s%s" % (
        name.encode("ascii").ljust(100, b"\0"), mode, owner.uid, owner.gid,
        size, seconds, kind, linkname.encode("ascii").ljust(100, b"\0"),
        tarfile.POSIX_MAGIC, owner.uname.encode("ascii").ljust(32, b"\0"),
        owner.gname.encode("ascii").ljust(32, b"\0"))
    block = block.ljust(BLOCK, b"\0")
    # The checksum sums the block with its own field as eight spaces.
    return b"%s%06o\0%s" % (block[:148], sum(block), block[155:])


def padding(size: int) -> bytes:
    """Zero bytes that round a member's data up to whole blocks."""
    return bytes(-size % BLOCK)


END_OF_ARCHIVE = bytes(2 * BLOCK)
