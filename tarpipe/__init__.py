"""tarpipe: exact, streaming, safe tar pipes for code sandboxes.

Pack a tree (`pack_dir`) or the visible files a browser sends
(`pack_files`) into a tar stream, pass it through memory (`retar`), and
apply it to a directory (`unpack_into`), one member at a time, with every
mtime exact to the nanosecond, modes cleaned and owners mapped.  Nothing
here knows about containers; the `runners` package composes it with the
Docker SDK.
"""

from ._stream import TarStream, concat
from .errors import (
    ArchiveError,
    LimitExceededError,
    StreamConsumedError,
    SwapError,
    TarPipeError,
    UnsafeMemberError,
)
from .filediff import FileDiff, FileState, diff
from .limits import Limits
from .owner import NOBODY, Owner
from .pack import pack_dir, pack_directories, pack_files
from .retar import retar
from .unpack import unpack_into

__all__ = [
    "NOBODY",
    "ArchiveError",
    "FileDiff",
    "FileState",
    "LimitExceededError",
    "Limits",
    "Owner",
    "StreamConsumedError",
    "SwapError",
    "TarPipeError",
    "TarStream",
    "UnsafeMemberError",
    "concat",
    "diff",
    "pack_dir",
    "pack_directories",
    "pack_files",
    "retar",
    "unpack_into",
]
