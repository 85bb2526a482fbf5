"""Our seccomp profile, as data, and when it is used (no engine needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runners import ContainerLimits
from runners.seccomp import ALLOWED, PROFILE, security_options

# What a kata never needs and the kernel should not be asked for: each
# name with why. None may appear among the calls allowed outright.
NEVER = {
    "io_uring_setup": "io_uring's own syscalls bypass the filter",
    "io_uring_enter": "io_uring",
    "io_uring_register": "io_uring",
    "unshare": "new namespaces: a user namespace gives back capabilities",
    "setns": "joining namespaces",
    "clone": "allowed only without namespace flags (its own rule)",
    "clone3": "its flags cannot be read by a filter: ENOSYS",
    "mount": "mounts", "umount2": "mounts", "pivot_root": "mounts",
    "fsopen": "the new mount API", "move_mount": "the new mount API",
    "open_tree": "the new mount API", "mount_setattr": "the new mount API",
    "keyctl": "the kernel keyring is not namespaced",
    "add_key": "keyring", "request_key": "keyring",
    "bpf": "eBPF", "perf_event_open": "perf events",
    "userfaultfd": "a classic exploit helper",
    "init_module": "modules", "finit_module": "modules",
    "delete_module": "modules", "kexec_load": "kexec",
    "reboot": "the host's", "swapon": "the host's", "acct": "the host's",
    "settimeofday": "the host's clock", "clock_settime": "the host's clock",
    "sethostname": "even a namespaced one", "chroot": "needs a capability",
    "socket": "allowed except AF_VSOCK (its own rule)",
    "personality": "allowed for a few personas (its own rules)",
    "kcmp": "comparing other processes' kernel objects",
    "open_by_handle_at": "escapes a bind mount (the shocker exploit)",
}


def test_calls_allowed_are_unique_and_never_the_dangerous_ones() -> None:
    assert len(ALLOWED) == len(set(ALLOWED))
    assert sorted(set(ALLOWED) & NEVER.keys()) == []


def test_only_the_x86_64_abi_is_let_through() -> None:
    assert PROFILE["architectures"] == ["SCMP_ARCH_X86_64"]
    assert PROFILE["defaultAction"] == "SCMP_ACT_ERRNO"


def test_clone_with_a_namespace_flag_is_refused() -> None:
    rules = [rule for rule in _rules() if rule["names"] == ["clone"]]
    [rule] = rules
    [arg] = rule["args"]
    assert arg["op"] == "SCMP_CMP_MASKED_EQ"
    user_ns, net_ns = 0x10000000, 0x40000000
    assert arg["value"] & user_ns and arg["value"] & net_ns
    assert arg["valueTwo"] == 0


def test_the_profile_is_json_the_engine_takes() -> None:
    text = json.dumps(PROFILE)
    assert json.loads(text) == PROFILE


class _Client:
    """Enough of a DockerClient for `security_options`."""

    def __init__(self, arch: str, url: str) -> None:
        self.arch, self.asked = arch, 0
        self.api = type("Api", (), {"base_url": url})()

    def version(self) -> dict[str, str]:
        self.asked += 1
        return {"Arch": self.arch}


@pytest.mark.parametrize(("arch", "own"), [("amd64", True), ("arm64", False)])
def test_the_profile_goes_to_an_x86_64_engine_only(arch: str,
                                                   own: bool) -> None:
    client: Any = _Client(arch, f"http+docker://test-{arch}")

    options = security_options(client)
    again = security_options(client)

    assert options == again
    assert options[0] == "no-new-privileges"
    assert any(o.startswith("seccomp=") for o in options) is own
    assert client.asked == 1  # once per engine


def test_the_engine_default_can_be_asked_for() -> None:
    client: Any = _Client("amd64", "http+docker://test-engine-default")

    assert security_options(client, own_profile=False) == [
        "no-new-privileges"]
    with pytest.raises(ValueError, match="syscalls must be one of"):
        ContainerLimits(syscalls="none")


def _rules() -> list[dict[str, Any]]:
    rules = PROFILE["syscalls"]
    assert isinstance(rules, list)
    return rules
