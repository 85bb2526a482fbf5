"""Tar headers with exact nanosecond mtimes.

`tarfile` keeps a member's mtime as a float, which cannot hold nanoseconds
(a 2024 mtime has 19 significant digits).  Here an mtime is an int of
nanoseconds everywhere, and travels as the text of a PAX `mtime` record,
written from and parsed into integers.
"""

from __future__ import annotations

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
        raise ArchiveError(f"bad PAX mtime {text!r}", member)
    sign, seconds, fraction = match.groups()
    nanos = int((fraction or "")[:9].ljust(9, "0"))
    value = int(seconds) * NS_PER_SECOND + nanos
    return -value if sign else value


def mtime_ns_of(member: tarfile.TarInfo) -> int:
    """A parsed member's mtime in nanoseconds, exact when PAX carried it."""
    text = member.pax_headers.get("mtime")
    if text is not None:
        return parse_mtime(text, member.name)
    return int(member.mtime) * NS_PER_SECOND


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
    info = tarfile.TarInfo(name)
    info.type = kind.value
    info.mode = mode & 0o7777
    info.size = size if kind is Kind.FILE else 0
    info.linkname = linkname
    info.uid, info.gid = owner.uid, owner.gid
    info.uname, info.gname = owner.uname, owner.gname
    # The ustar field holds whole seconds (0 when out of its range); the
    # PAX record, which readers prefer, holds the exact value.
    info.mtime = max(0, min(mtime_ns // NS_PER_SECOND, 8**11 - 1))
    info.pax_headers = {"mtime": format_mtime(mtime_ns)}
    return info.tobuf(tarfile.PAX_FORMAT, ENCODING, ERRORS)


def padding(size: int) -> bytes:
    """Zero bytes that round a member's data up to whole blocks."""
    return bytes(-size % BLOCK)


END_OF_ARCHIVE = bytes(2 * BLOCK)
