"""The rules every member of an incoming archive must pass.

As with `tarfile`'s extraction filters, each rule is a small function that
takes a member and the `CheckContext` of the archive read so far, and
returns the member, cleaned, or None to skip it, or raises
`UnsafeMemberError` (or `LimitExceededError`) naming the member and the
rule.  `check_member` runs them in order.  They look at names only, never
at a disk, so `retar` applies them to a stream in flight; `unpack_into`
adds what only the destination can tell (a symlink already there).

Choices made here, stricter than `tarfile.data_filter`:

- A `..` component is refused wherever it is, even where the path would
  stay inside: the kernel applies `..` after following a symlink, so
  `a/../b` is only harmless if `a` is known not to be one.
- Empty and `.` components are dropped, so GNU tar's `./a` is `a`.  The
  `./` directory GNU tar writes for the top of its input is skipped; any
  other member naming the destination itself is refused.
- A name may appear once.  A second member with the same name, a file
  where a directory was (written or implied by a name) and a directory
  where a file was are refused: two contents for one name leave a
  sandbox's record, and its diff, without meaning.
- Symbolic links, once allowed, must be relative, and may hold `..` only
  as leading components, no more of them than the link's own directory
  is deep.  No member may pass through a symlink, so those leading `..`
  climb real directories, and what follows only descends.
- Hard links may only name a regular file written earlier in the archive.
- Setuid, setgid and sticky bits are cleared; other permission bits are
  kept as given, group and other write included.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import tarsafe

from .errors import LimitExceededError, UnsafeMemberError
from .filediff import Kind
from .limits import Limits

__all__ = ["CHECKS", "CheckContext", "check_member", "member_kind"]

_KINDS: Final[dict[bytes, Kind]] = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "directory",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
}
_SPECIAL: Final = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}
_WORDS: Final[dict[str, str]] = {
    "file": "file", "directory": "directory", "symlink": "symlink",
    "hardlink": "hard link", "parent": "directory",
}
# Kinds a later member may sit below: "parent" is a directory that names
# of earlier members imply without a member of its own.
_DIRECTORY_KINDS: Final = ("directory", "parent")


@dataclass
class CheckContext:
    """The settings of one archive's checks, and what they have seen."""

    limits: Limits
    allow_links: bool = False
    #: entries the archive creates: members, and directories they imply
    entries: int = 0
    total_bytes: int = 0
    #: every path seen so far: a member's kind, or "parent"
    seen: dict[str, str] = field(default_factory=dict)


Check = Callable[[tarfile.TarInfo, CheckContext], tarfile.TarInfo | None]


def member_kind(member: tarfile.TarInfo) -> Kind:
    """The kind of a member `check_type` accepted."""
    return _KINDS[member.type]


def count_member(member: tarfile.TarInfo,
                 context: CheckContext) -> tarfile.TarInfo:
    """Refuse the member that takes the archive past `max_members`."""
    context.entries += 1
    _check_entries(member.name, context)
    return member


def check_type(member: tarfile.TarInfo,
               context: CheckContext) -> tarfile.TarInfo:
    """Accept files, directories and links; refuse everything else."""
    if _is_sparse(member):
        raise UnsafeMemberError(member.name, "sparse member")
    special = _SPECIAL.get(member.type)
    if special is not None:
        raise UnsafeMemberError(member.name, "special file not allowed",
                                special)
    if member.type not in _KINDS:
        raise UnsafeMemberError(member.name, "unsupported member type",
                                repr(member.type))
    return member


def clean_name(member: tarfile.TarInfo,
               context: CheckContext) -> tarfile.TarInfo | None:
    """Refuse names that leave the destination; drop `.` components."""
    parts = _relative_parts(member.name, member.name, "name")
    if not parts:
        if member.isdir():
            return None  # GNU tar's "./": the destination itself
        raise UnsafeMemberError(member.name,
                                "name is the destination itself")
    name = "/".join(parts)
    _check_lengths(member.name, name, parts, context.limits)
    if name == member.name:
        return member
    return member.replace(name=name, deep=False)


def check_size(member: tarfile.TarInfo,
               context: CheckContext) -> tarfile.TarInfo:
    """Keep each file, and all files together, within the `Limits`."""
    if member.size < 0:
        raise UnsafeMemberError(member.name, "negative size",
                                str(member.size))
    if member_kind(member) != "file":
        return member
    limits = context.limits
    if member.size > limits.max_file_bytes:
        raise LimitExceededError(member.name, "max_file_bytes",
                                 member.size, limits.max_file_bytes)
    context.total_bytes += member.size
    if context.total_bytes > limits.max_total_bytes:
        raise LimitExceededError(member.name, "max_total_bytes",
                                 context.total_bytes, limits.max_total_bytes)
    return member


def check_link(member: tarfile.TarInfo,
               context: CheckContext) -> tarfile.TarInfo:
    """Refuse links unless allowed, and any link that leads outside.

    A member that is no link loses any link target its header carries
    (a GNU long-link header before a folder gives one), so nothing
    downstream writes out or records a target nobody checked.
    """
    kind = member_kind(member)
    if kind not in ("symlink", "hardlink"):
        if member.linkname:
            return member.replace(linkname="", deep=False)
        return member
    target = member.linkname
    if not context.allow_links:
        raise UnsafeMemberError(member.name, f"{_WORDS[kind]} not allowed",
                                f"to {target!r}; allow_links is off")
    allowed = context.limits.max_path_bytes
    length = len(_encoded(member.name, target, "link target"))
    if length > allowed:
        raise LimitExceededError(member.name, "max_path_bytes", length,
                                 allowed)
    if kind == "symlink":
        _check_symlink_target(member.name, target)
        return member
    name = "/".join(_relative_parts(member.name, target, "link target"))
    _check_hardlink_target(member.name, name, context)
    return member.replace(linkname=name, deep=False)


def check_place(member: tarfile.TarInfo,
                context: CheckContext) -> tarfile.TarInfo:
    """Refuse a second use of a name, and paths through links or files.

    This rule records the member, so it must come after every rule that
    can refuse it.
    """
    kind = member_kind(member)
    parents = _new_parents(member.name, context.seen)
    before = context.seen.get(member.name)
    if before is not None:
        _check_reuse(member.name, kind, before)
    context.entries += len(parents)
    _check_entries(member.name, context)
    context.seen.update(dict.fromkeys(parents, "parent"))
    context.seen[member.name] = kind
    return member


def clean_mode(member: tarfile.TarInfo,
               context: CheckContext) -> tarfile.TarInfo:
    """Clear setuid, setgid and sticky bits; keep the permission bits."""
    mode = member.mode & 0o777
    if mode == member.mode:
        return member
    return member.replace(mode=mode, deep=False)


def second_opinion(member: tarfile.TarInfo,
                   context: CheckContext) -> tarfile.TarInfo:
    """Ask tarsafe too, against a stand-in root, after our own rules.

    The rules above are stricter than tarsafe's, so this never fires
    unless one of them is wrong: it is there to catch exactly that.
    tarsafe cannot stream (it reads the whole archive before extracting),
    so its per-member checks are called one member at a time.  Its
    symlink check is left out: it resolves a target from the archive's
    root, not from the link's own directory; so is its device check, as
    `check_type` lets no member of another type this far.
    """
    if (_TARSAFE._is_traversal_attempt(member, root=_STAND_IN_ROOT)
            or (member.islnk() and _TARSAFE._is_unsafe_link(
                member, root=_STAND_IN_ROOT))):
        raise UnsafeMemberError(member.name, "leaves the destination",
                                "tarsafe's check")
    return member


# tarsafe's checks are methods of its TarFile subclass but read nothing
# of the instance; one made without opening any archive serves them.
_TARSAFE: Final = tarsafe.TarSafe.__new__(tarsafe.TarSafe)
_STAND_IN_ROOT: Final = "/tarpipe-destination"

CHECKS: Final[tuple[Check, ...]] = (
    count_member, check_type, clean_name, check_size, check_link,
    check_place, clean_mode, second_opinion,
)


def check_member(member: tarfile.TarInfo,
                 context: CheckContext) -> tarfile.TarInfo | None:
    """The member cleaned by every rule of `CHECKS`, or None to skip it."""
    for check in CHECKS:
        checked = check(member, context)
        if checked is None:
            return None
        member = checked
    return member


def _is_sparse(member: tarfile.TarInfo) -> bool:
    return (member.type == tarfile.GNUTYPE_SPARSE
            or member.sparse is not None
            or any(key.startswith("GNU.sparse.")
                   for key in member.pax_headers))


def _relative_parts(member: str, path: str, what: str) -> list[str]:
    """The components of a relative `path` without `.`; no `..` allowed."""
    if not path:
        raise UnsafeMemberError(member, f"empty {what}")
    if "\0" in path:
        raise UnsafeMemberError(member, f"NUL in {what}", repr(path))
    if path.startswith("/"):
        rule = "absolute path" if what == "name" else f"absolute {what}"
        raise UnsafeMemberError(member, rule, repr(path))
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        rule = "'..' component" if what == "name" else f"'..' in {what}"
        raise UnsafeMemberError(member, rule, repr(path))
    return parts


def _encoded(member: str, text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnsafeMemberError(member, f"{what} not encodable",
                                repr(text)) from None


def _check_lengths(member: str, name: str, parts: list[str],
                   limits: Limits) -> None:
    length = len(_encoded(member, name, "name"))
    if length > limits.max_path_bytes:
        raise LimitExceededError(member, "max_path_bytes", length,
                                 limits.max_path_bytes)
    longest = max(len(_encoded(member, part, "name")) for part in parts)
    if longest > limits.max_name_bytes:
        raise LimitExceededError(member, "max_name_bytes", longest,
                                 limits.max_name_bytes)


def _check_entries(member: str, context: CheckContext) -> None:
    allowed = context.limits.max_members
    if context.entries > allowed:
        raise LimitExceededError(member, "max_members", context.entries,
                                 allowed)


def _check_symlink_target(member: str, target: str) -> None:
    if not target:
        raise UnsafeMemberError(member, "empty link target")
    if "\0" in target:
        raise UnsafeMemberError(member, "NUL in link target", repr(target))
    if target.startswith("/"):
        raise UnsafeMemberError(member, "absolute link target", repr(target))
    parts = [part for part in target.split("/") if part not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        raise UnsafeMemberError(member, "'..' after a name in link target",
                                repr(target))
    if ups > member.count("/"):
        raise UnsafeMemberError(member, "link leaves the destination",
                                repr(target))


def _check_hardlink_target(member: str, target: str,
                           context: CheckContext) -> None:
    kind = context.seen.get(target)
    if kind is None:
        raise UnsafeMemberError(member, "hard link target not earlier in "
                                "the archive", repr(target))
    if kind not in ("file", "hardlink"):
        raise UnsafeMemberError(member, "hard link target not a file",
                                f"{target!r} is a {_WORDS[kind]}")


def _new_parents(name: str, seen: dict[str, str]) -> list[str]:
    """The directories `name` implies that no earlier member did.

    Walks up from the nearest parent and stops at the first one already
    seen: the ones above it were checked when it was.
    """
    parents = []
    end = name.rfind("/")
    while end > 0:
        parent = name[:end]
        kind = seen.get(parent)
        if kind is not None:
            if kind == "symlink":
                raise UnsafeMemberError(name, "path passes through a "
                                        "symlink", repr(parent))
            if kind not in _DIRECTORY_KINDS:
                raise UnsafeMemberError(name, "path passes through a "
                                        f"{_WORDS[kind]}", repr(parent))
            break
        parents.append(parent)
        end = name.rfind("/", 0, end)
    return parents


def _check_reuse(name: str, kind: str, before: str) -> None:
    if before == "parent" and kind == "directory":
        return  # a directory's member after names below it
    was_directory = before in _DIRECTORY_KINDS
    if was_directory and kind != "directory":
        raise UnsafeMemberError(name, f"{_WORDS[kind]} replaces a directory")
    if kind == "directory" and not was_directory:
        raise UnsafeMemberError(name, f"directory replaces a {_WORDS[before]}")
    raise UnsafeMemberError(name, "duplicate name")
