"""Every error tarpipe raises.

    TarPipeError                 base of them all
     +-- StreamConsumedError     a once-only stream was read a second time
     +-- ArchiveError            the bytes are not a well-formed tar stream
     +-- UnsafeMemberError       a member breaks a safety rule (.member, .rule)
     |    +-- LimitExceededError a member or the archive passes a Limits value
     +-- SwapError               an atomic replace could not be carried out

Each error that concerns one archive member carries that member's name, so
a caller can say which file of a sandbox was refused and why.
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "LimitExceededError",
    "StreamConsumedError",
    "SwapError",
    "TarPipeError",
    "UnsafeMemberError",
]


class TarPipeError(Exception):
    """Base class of every error raised by tarpipe."""


class StreamConsumedError(TarPipeError):
    """A stream that can be read only once was read again."""


class ArchiveError(TarPipeError):
    """The input is not a well-formed tar stream (truncated, bad header)."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class UnsafeMemberError(TarPipeError):
    """A member was refused because it breaks the rule named by `rule`."""

    def __init__(self, member: str, rule: str, detail: str = "") -> None:
        text = f"member {member!r} refused: {rule}"
        super().__init__(f"{text} ({detail})" if detail else text)
        self.member = member
        self.rule = rule
        self.detail = detail


class LimitExceededError(UnsafeMemberError):
    """A member, or the archive so far, went past one of the `Limits`."""

    def __init__(self, member: str, limit: str, value: int, allowed: int) -> None:
        super().__init__(member, f"{limit} exceeded", f"{value} > {allowed}")
        self.limit = limit
        self.value = value
        self.allowed = allowed


class SwapError(TarPipeError):
    """The new tree could not be swapped in place of the old one."""
