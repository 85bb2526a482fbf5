"""Read a small tar stream into memory: a kata's history, a manifest.

The whole point of tarpipe is not to hold archives in memory, so this is
for archives known to be small; `limits` bounds what it will hold (by
default `Limits().max_total_bytes`).
"""

from __future__ import annotations

from typing import Final

from ._checks import CheckContext, check_member, member_kind
from ._reader import Source, TarReader
from .limits import Limits

__all__ = ["unpack_files"]

_DEFAULT_LIMITS: Final = Limits()


def unpack_files(
    stream: Source, *, limits: Limits = _DEFAULT_LIMITS
) -> dict[str, bytes]:
    """The regular files of tar `stream`: relative path to bytes.

    Every member passes the rules of `unpack_into` (links are refused);
    directories are checked and left out of the result.
    """
    reader = TarReader(stream, limits)
    context = CheckContext(limits, allow_links=False)
    files: dict[str, bytes] = {}
    for member in reader:
        checked = check_member(member, context)
        if checked is not None and member_kind(checked) == "file":
            files[checked.name] = b"".join(reader.chunks(checked))
    return files
