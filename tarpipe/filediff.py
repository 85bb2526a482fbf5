"""What a run did to a sandbox: files created, deleted and changed.

A *record* is a plain dict from a member's relative path (no trailing
slash, `/` separators) to its `FileState`.  `pack_dir`, `pack_files`,
`unpack_into` and `retar` fill one as a side effect when given a dict, so a
runner learns the state of a sandbox from the bytes it moves anyway,
without reading the tree a second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["FileDiff", "FileState", "diff", "file_state"]

Kind = Literal["file", "directory", "symlink", "hardlink"]


@dataclass(frozen=True)
class FileState:
    """One member as far as a diff cares, and its mtime for the curious.

    `digest` is the SHA-256 of a file's bytes, the target of a link, and
    empty for a directory.
    """

    kind: Kind
    mode: int
    digest: str
    size: int = 0
    mtime_ns: int = 0

    def same_content(self, other: FileState) -> bool:
        """Equal kind, permission bits and bytes; the mtime is ignored."""
        return (self.kind, self.mode, self.digest) == (
            other.kind, other.mode, other.digest)


def file_state(
    content: bytes, *, mode: int = 0o644, mtime_ns: int = 0
) -> FileState:
    """The state of a regular file holding `content`."""
    digest = hashlib.sha256(content).hexdigest()
    return FileState("file", mode & 0o7777, digest, len(content), mtime_ns)


@dataclass(frozen=True)
class FileDiff:
    """Paths, sorted, relative to the sandbox; directories are left out."""

    created: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.created or self.deleted or self.changed)


def diff(
    before: Mapping[str, FileState], after: Mapping[str, FileState]
) -> FileDiff:
    """Compare two records by content and mode, never by mtime alone."""
    old = {p: s for p, s in before.items() if s.kind != "directory"}
    new = {p: s for p, s in after.items() if s.kind != "directory"}
    return FileDiff(
        created=tuple(sorted(new.keys() - old.keys())),
        deleted=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(sorted(
            p for p in old.keys() & new.keys()
            if not old[p].same_content(new[p])
        )),
    )
