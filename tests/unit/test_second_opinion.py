"""tarsafe's checks stand behind ours: they catch what a broken rule lets by."""

from __future__ import annotations

import tarfile

import pytest

from tarpipe import UnsafeMemberError
from tarpipe import _checks as checks
from tarpipe.limits import Limits


def member(name: str, kind: bytes = tarfile.REGTYPE,
           linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("info, broken_rules", [
    (member("../escape"), {checks.clean_name}),
    (member("/etc/passwd"), {checks.clean_name}),
    (member("hard", tarfile.LNKTYPE, "../../etc/shadow"), {checks.check_link}),
])
def test_tarsafe_refuses_what_our_rules_would_miss_if_broken(
    monkeypatch: pytest.MonkeyPatch, info: tarfile.TarInfo,
    broken_rules: set[checks.Check],
) -> None:
    kept = tuple(rule for rule in checks.CHECKS if rule not in broken_rules)
    monkeypatch.setattr(checks, "CHECKS", kept)
    context = checks.CheckContext(Limits(), allow_links=True)

    with pytest.raises(UnsafeMemberError, match="tarsafe's check"):
        checks.check_member(info, context)


def test_tarsafe_lets_ordinary_members_pass() -> None:
    context = checks.CheckContext(Limits(), allow_links=True)
    for info in (member("a/b.c"), member("d", tarfile.DIRTYPE),
                 member("a/h", tarfile.LNKTYPE, "a/b.c")):
        assert checks.second_opinion(info, context) is info
