"""Who owns the files of a sandbox: `nobody` inside, the service outside."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

__all__ = ["NOBODY", "Owner"]


@dataclass(frozen=True)
class Owner:
    """Numeric ids, and the names written beside them in tar headers."""

    uid: int
    gid: int
    uname: str = ""
    gname: str = ""

    def __post_init__(self) -> None:
        for field, value in (("uid", self.uid), ("gid", self.gid)):
            if not isinstance(value, int) or not 0 <= value < 2**32:
                raise ValueError(f"Owner {field} must be an id in 0..2**32-1, "
                                 f"not {value!r}")

    @classmethod
    def current(cls) -> Owner:
        """The owner of the calling process (effective ids)."""
        uid, gid = os.geteuid(), os.getegid()
        return cls(uid, gid, _user_name(uid), _group_name(gid))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


NOBODY = Owner(65534, 65534, "nobody", "nogroup")
