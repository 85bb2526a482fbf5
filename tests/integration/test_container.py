"""The container layer against a real engine: what a sandbox keeps and stops.

Archives are written here with tarpipe's own header writer and read back
with `tarfile`, keeping each mtime as an int of nanoseconds.
"""

from __future__ import annotations

import gc
import io
import os
import socket
import tarfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from runners.container import (
    ROLE_LABEL,
    ContainerLimits,
    ExecResult,
    Sandbox,
    leftover_containers,
    remove_leftovers,
)
from runners.errors import ContainerError, EngineError, ImageNotFoundError
from runners.images import BUSYBOX, GCC, require_image
from tarpipe._header import (
    END_OF_ARCHIVE,
    NS_PER_SECOND,
    Kind,
    member_header,
    mtime_ns_of,
    padding,
    parse_mtime,
)
from tarpipe.owner import NOBODY, Owner

pytestmark = pytest.mark.docker

MiB = 1024 * 1024


@dataclass(frozen=True)
class Member:
    name: str
    mode: int
    mtime: str  # PAX mtime text
    data: bytes | None = None  # None: a directory

    @property
    def mtime_ns(self) -> int:
        return parse_mtime(self.mtime)


MEMBERS = [
    Member("hello.c", 0o644, "1700000000.123456789", b"int main(){}\n"),
    Member("run.sh", 0o755, "1700000001.5", b"#!/bin/sh\necho hi\n"),
    Member("before-1970.txt", 0o600, "-100.5", b"old\n"),
    Member("after-2038.txt", 0o640, "4102444800.000000001", b"new\n"),
    Member("-dash.txt", 0o644, "1700000002", b"dash\n"),
    Member(".hidden", 0o644, "1700000003.000000001", b""),
    Member("sub", 0o750, "1600000000.000000007"),
    Member("sub/deep.h", 0o444, "1700000000.999999999", b"#define X 1\n"),
]


def archive(members: Iterable[Member], owner: Owner = NOBODY) -> Iterator[bytes]:
    """A tar stream, one chunk a header or a file's data."""
    for member in members:
        kind = Kind.DIRECTORY if member.data is None else Kind.FILE
        data = member.data or b""
        yield member_header(member.name, kind, mode=member.mode,
                            mtime_ns=member.mtime_ns, owner=owner,
                            size=len(data))
        if data:
            yield data + padding(len(data))
    yield END_OF_ARCHIVE


@dataclass(frozen=True)
class Got:
    mode: int
    mtime_ns: int
    uid: int
    data: bytes | None


def unpacked(chunks: Iterable[bytes]) -> dict[str, Got]:
    """What a tar stream holds, by member name."""
    got = {}
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        for info in tar:
            reader = tar.extractfile(info) if info.isfile() else None
            got[info.name] = Got(info.mode, mtime_ns_of(info), info.uid,
                                 reader.read() if reader else None)
    return got


def stat_lines(box: Sandbox, fmt: str) -> dict[str, list[str]]:
    names = [m.name for m in MEMBERS]
    result = box.run(["stat", "-c", fmt, "--", *names], max_seconds=10)
    assert result.status == 0, result.stderr
    rows = [line.split("|") for line in result.stdout.decode().splitlines()]
    return {row[0]: row[1:] for row in rows}


def peak_memory(action: Callable[[], object]) -> int:
    """Bytes allocated by `action` at its peak, over what was there before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.fixture
def gcc_box(docker_client: docker.DockerClient) -> Iterator[Sandbox]:
    with Sandbox(docker_client, GCC) as box:
        yield box


@pytest.fixture
def busybox(docker_client: docker.DockerClient) -> Iterator[Sandbox]:
    with Sandbox(docker_client, BUSYBOX) as box:
        yield box


def is_gone(client: docker.DockerClient, container_id: str) -> bool:
    try:
        client.containers.get(container_id)
    except docker.errors.NotFound:
        return True
    return False


# ---- files in and out ----------------------------------------------------


def test_gnu_tar_keeps_nanosecond_mtimes_modes_and_owner_inside(
        gcc_box: Sandbox) -> None:
    gcc_box.put(archive(MEMBERS))

    inside = stat_lines(gcc_box, "%n|%.9Y|%a|%u|%g")
    for member in MEMBERS:
        mtime, mode, uid, gid = inside[member.name]
        assert parse_mtime(mtime) == member.mtime_ns, member.name
        assert int(mode, 8) == member.mode, member.name
        assert (uid, gid) == ("65534", "65534"), member.name


def test_gnu_tar_gives_them_back_to_the_nanosecond(gcc_box: Sandbox) -> None:
    gcc_box.put(archive(MEMBERS))

    got = unpacked(gcc_box.get())

    assert sorted(got) == sorted(m.name for m in MEMBERS)
    for member in MEMBERS:
        assert got[member.name] == Got(member.mode, member.mtime_ns,
                                       NOBODY.uid, member.data), member.name


def test_put_and_get_stream_without_holding_the_archive(
        gcc_box: Sandbox) -> None:
    size = 40 * MiB
    chunk = bytes(64 * 1024)

    def big_archive() -> Iterator[bytes]:
        yield member_header("big.bin", Kind.FILE, mode=0o644,
                            mtime_ns=NS_PER_SECOND, owner=NOBODY, size=size)
        for _ in range(size // len(chunk)):
            yield chunk
        yield END_OF_ARCHIVE

    received: list[int] = []
    peak_in = peak_memory(lambda: gcc_box.put(big_archive()))
    peak_out = peak_memory(
        lambda: received.extend(len(piece) for piece in gcc_box.get()))

    stat = gcc_box.run("stat -c %s big.bin", max_seconds=5)
    assert stat.stdout == b"%d\n" % size
    assert sum(received) > size
    assert max(received) <= 64 * 1024
    assert peak_in < 4 * MiB
    assert peak_out < 4 * MiB


def test_get_of_an_empty_folder_is_an_empty_archive(
        gcc_box: Sandbox, busybox: Sandbox) -> None:
    for box in (gcc_box, busybox):
        assert unpacked(box.get()) == {}


def test_a_get_closed_early_leaves_the_sandbox_usable(gcc_box: Sandbox) -> None:
    gcc_box.run("head -c 10000000 /dev/zero > zeros", max_seconds=10)
    chunks = gcc_box.get()
    next(iter(chunks))
    chunks.close()  # type: ignore[attr-defined]

    assert gcc_box.run("echo ok", max_seconds=5).stdout == b"ok\n"


def test_put_reports_what_tar_said(gcc_box: Sandbox, busybox: Sandbox) -> None:
    for box in (gcc_box, busybox):
        with pytest.raises(ContainerError, match="/nowhere"):
            box.put(archive(MEMBERS[:1]), path="/nowhere")
    with pytest.raises(ContainerError, match="tar archive"):
        gcc_box.put([b"this is not a tar stream\n" * 100])


def test_get_reports_what_failed(gcc_box: Sandbox) -> None:
    with pytest.raises(ContainerError, match="/nowhere"):
        b"".join(gcc_box.get("/nowhere"))


def test_root_keeps_the_owner_of_each_member(
        docker_client: docker.DockerClient) -> None:
    outside = Owner(4321, 4321)
    with Sandbox(docker_client, GCC, user="0:0", role="data",
                 cap_add=["CHOWN", "DAC_OVERRIDE", "FOWNER"]) as box:
        box.put(archive(MEMBERS, owner=outside))
        inside = stat_lines(box, "%n|%u|%.9Y")
        got = unpacked(box.get())

    for member in MEMBERS:
        uid, mtime = inside[member.name]
        assert (uid, parse_mtime(mtime)) == ("4321", member.mtime_ns)
        assert got[member.name].uid == 4321


def test_busybox_keeps_whole_seconds_from_the_ustar_header(
        busybox: Sandbox) -> None:
    assert not busybox.gnu_tar
    busybox.put(archive(MEMBERS))

    inside = stat_lines(busybox, "%n|%Y|%a|%u")
    got = unpacked(busybox.get())

    assert sorted(got) == sorted(m.name for m in MEMBERS)
    for member in MEMBERS:
        # The ustar field cannot hold a negative mtime: 0 is written.
        seconds = max(0, member.mtime_ns // NS_PER_SECOND)
        if member.data is None:
            seconds = int(inside[member.name][0])  # busybox: time of unpacking
        assert inside[member.name] == [str(seconds), f"{member.mode:o}",
                                       "65534"], member.name
        assert got[member.name] == Got(member.mode, seconds * NS_PER_SECOND,
                                       NOBODY.uid, member.data), member.name


# ---- what a sandbox cannot do --------------------------------------------


def test_the_limits_reach_the_kernel(gcc_box: Sandbox) -> None:
    limits = ContainerLimits()
    script = ("cat /proc/self/limits; "
              "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null "
              "|| cat /sys/fs/cgroup/pids.max")
    result = gcc_box.run(script, max_seconds=5)
    lines = result.stdout.decode().splitlines()

    def soft_limit(title: str) -> str:
        line = next(line for line in lines if line.startswith(title))
        return line[len(title):].split()[0]

    assert soft_limit("Max file size") == str(limits.file_bytes)
    assert soft_limit("Max open files") == str(limits.nofile)
    assert soft_limit("Max processes") == str(limits.nproc)
    assert soft_limit("Max core file size") == "0"
    assert lines[-1] == str(limits.pids)


def test_no_network_but_loopback(gcc_box: Sandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        script = (f"ls /sys/class/net; cat /proc/net/dev; "
                  f"exec 3<>/dev/tcp/127.0.0.1/{port}")
        result = gcc_box.run(["bash", "-c", script], max_seconds=10)
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()

    lines = result.stdout.decode().splitlines()
    interfaces = [line.split(":")[0].strip() for line in lines
                  if ":" in line]
    assert lines[0] == "lo"
    assert interfaces == ["lo"]
    assert result.status != 0
    assert b"Connection refused" in result.stderr
    # Not even attached to the engine's "none" network: no endpoint.
    attrs = gcc_box.client.api.inspect_container(gcc_box.id)
    assert attrs["Config"]["NetworkDisabled"] is True
    assert not attrs["NetworkSettings"]["Networks"]


PLACES = ["/", "/bin", "/etc", "/usr", "/usr/bin", "/usr/local", "/home",
          "/root", "/var", "/var/tmp", "/run", "/dev", "/dev/shm",
          "/dev/mqueue", "/proc", "/sys", "/tmp", "/sandbox"]


# /dev/shm and /dev/mqueue are the container's own (private IPC namespace,
# small, counted in its memory); /dev is the engine's tmpfs, root's. All
# of them vanish with the container.
WRITABLE = {"/sandbox", "/tmp", "/dev/shm", "/dev/mqueue"}


@pytest.mark.parametrize(("user", "writable"), [
    ("65534:65534", WRITABLE),
    ("0:0", WRITABLE | {"/dev"}),
])
def test_only_the_sandbox_tmp_and_ipc_folders_take_writes(
        docker_client: docker.DockerClient, user: str,
        writable: set[str]) -> None:
    script = ('for d in "$@"; do touch "$d/.probe" 2>/dev/null '
              '&& echo "$d"; done; echo x >> /etc/passwd')
    with Sandbox(docker_client, GCC, user=user) as box:
        result = box.run(["sh", "-c", script, "sh", *PLACES], max_seconds=10)

    assert set(result.stdout.decode().split()) == writable
    assert result.status != 0
    assert b"/etc/passwd" in result.stderr


def test_an_endless_loop_times_out_and_the_container_is_killed(
        docker_client: docker.DockerClient, gcc_box: Sandbox) -> None:
    container_id = gcc_box.id
    started = time.monotonic()
    result = gcc_box.run("sleep 600 & while :; do :; done", max_seconds=2)
    elapsed = time.monotonic() - started

    assert result.timed_out
    assert result.status is None
    assert 2 <= result.duration <= elapsed < 3
    assert docker_client.containers.get(container_id).status == "exited"
    with pytest.raises(ContainerError, match="killed"):
        gcc_box.run("true", max_seconds=1)


def test_a_fork_bomb_is_stopped_by_the_pids_limit(
        docker_client: docker.DockerClient, gcc_box: Sandbox) -> None:
    started = time.monotonic()
    bomb = gcc_box.run("f() { f | f & }; f", max_seconds=5)

    assert time.monotonic() - started < 6
    assert bomb.timed_out or b"fork" in bomb.stderr.lower()
    with Sandbox(docker_client, BUSYBOX) as box:
        assert box.run("echo fine", max_seconds=5).stdout == b"fine\n"


# Calls the engine's default profile lets through and ours refuses: an
# io_uring instance, and getpid (20) through the 32-bit ABI.
_PROBE_C = r"""
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    char params[120] = {0};
    long ring = syscall(__NR_io_uring_setup, 1, params);
    long pid;
    printf("io_uring %s\n", ring < 0 ? "refused" : "made");
    fflush(stdout);
    __asm__ volatile ("int $0x80" : "=a"(pid) : "a"(20L));
    printf("i386 getpid %s\n", pid > 0 ? "answered" : "refused");
    return 0;
}
"""
_PROBE = f"cat > p.c <<'EOF'\n{_PROBE_C}EOF\ngcc -o p p.c && ./p"


@pytest.mark.parametrize(("syscalls", "said", "status"), [
    ("tarpipe", b"io_uring refused\n", 128 + 31),  # SIGSYS: a bad ABI
    ("engine", b"io_uring made\ni386 getpid answered\n", 0),
], ids=["ours", "engine-default"])
def test_io_uring_and_32_bit_calls_are_refused(
        docker_client: docker.DockerClient, syscalls: str, said: bytes,
        status: int) -> None:
    limits = ContainerLimits(syscalls=syscalls)
    with Sandbox(docker_client, GCC, limits=limits) as box:
        probe = box.run(_PROBE, max_seconds=30)

    assert (probe.stdout, probe.status) == (said, status), probe.stderr


def test_no_new_namespaces(busybox: Sandbox) -> None:
    tried = busybox.run("for flag in -U -n -m -p; do unshare $flag true "
                        "2>/dev/null; echo $?; done", max_seconds=5)

    assert tried.stdout == b"1\n1\n1\n1\n"


def test_a_memory_hog_is_killed_by_the_memory_limit(gcc_box: Sandbox) -> None:
    hog = gcc_box.run("""awk 'BEGIN { s = "x"; while (1) s = s s }'""",
                      max_seconds=20)

    assert hog.status == 128 + 9  # SIGKILL, from the OOM killer
    assert not hog.timed_out
    assert gcc_box.run("echo alive", max_seconds=5).stdout == b"alive\n"


def test_a_file_past_the_size_limit_is_refused(gcc_box: Sandbox) -> None:
    limit = ContainerLimits().file_bytes
    result = gcc_box.run(f"head -c {limit + MiB} /dev/zero > big; "
                         "echo $?; stat -c %s big", max_seconds=10)

    assert result.stdout == b"%d\n%d\n" % (128 + 25, limit)  # SIGXFSZ


def test_an_output_flood_is_capped_in_bounded_memory(gcc_box: Sandbox) -> None:
    results: list[ExecResult] = []
    peak = peak_memory(lambda: results.append(gcc_box.run(
        "head -c 200000000 /dev/zero; head -c 50000000 /dev/zero >&2; exit 3",
        max_seconds=30, stdout_cap=1000, stderr_cap=2000)))
    result = results[0]

    assert (result.stdout, result.stdout_truncated) == (bytes(1000), True)
    assert (result.stderr, result.stderr_truncated) == (bytes(2000), True)
    assert (result.status, result.timed_out) == (3, False)
    assert peak < 4 * MiB


def test_output_under_the_caps_is_whole(gcc_box: Sandbox) -> None:
    result = gcc_box.run(["sh", "-c", 'printf "%s" "$1"; echo err >&2; exit 7',
                          "sh", "out"], max_seconds=5, stdout_cap=3)

    assert result == ExecResult(b"out", b"err\n", False, False, 7, False,
                                result.duration)
    assert 0 < result.duration < 5


# ---- the container's life ------------------------------------------------


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_the_container_is_removed_whatever_ends_the_block(
        docker_client: docker.DockerClient,
        interruption: type[BaseException]) -> None:
    with pytest.raises(interruption), Sandbox(docker_client, BUSYBOX) as box:
        container_id = box.id
        raise interruption()

    assert is_gone(docker_client, container_id)


def test_a_timed_out_sandbox_is_removed_too(
        docker_client: docker.DockerClient) -> None:
    with Sandbox(docker_client, BUSYBOX) as box:
        container_id = box.id
        assert box.run("sleep 10", max_seconds=0.5).timed_out

    assert is_gone(docker_client, container_id)


def test_a_container_that_cannot_start_is_removed(
        docker_client: docker.DockerClient) -> None:
    # A file cannot be mounted on the /sandbox folder: start fails.
    with pytest.raises(ContainerError, match="not a directory"), \
            Sandbox(docker_client, BUSYBOX, sandbox_dir="/etc/hostname"):
        pass

    assert leftover_containers(docker_client, pid=os.getpid()) == []


def test_a_missing_image_is_named_and_leaves_no_container(
        docker_client: docker.DockerClient) -> None:
    with pytest.raises(ImageNotFoundError,
                       match=r"'tarpipe/nothing:0'.*\.ci/images"):
        require_image(docker_client, "tarpipe/nothing:0")
    with pytest.raises(ImageNotFoundError) as raised, \
            Sandbox(docker_client, "tarpipe/nothing:0"):
        pass

    assert raised.value.image == "tarpipe/nothing:0"
    assert leftover_containers(docker_client, pid=os.getpid()) == []


def test_an_unreachable_engine_is_an_engine_error(tmp_path: Path) -> None:
    client = docker.DockerClient(base_url=f"unix://{tmp_path}/no.sock",
                                 version="1.41")
    # docker-py leaves the socket of a failed connect unclosed (fix
    # proposed in docker/docker-py#3356): collect it while its warning
    # is ignored, rather than in whichever test runs the collector next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            with pytest.raises(EngineError, match="tarpipe/busybox:1"), \
                    Sandbox(client, BUSYBOX):
                pass
        finally:
            client.close()
        gc.collect()


def test_leftovers_are_found_by_label_and_removed(
        docker_client: docker.DockerClient) -> None:
    box = Sandbox(docker_client, BUSYBOX)
    box.start()
    try:
        found = leftover_containers(docker_client, pid=os.getpid())
        assert [c.id for c in found] == [box.id]
        assert found[0].labels[ROLE_LABEL] == "sandbox"

        assert remove_leftovers(docker_client, pid=os.getpid()) == 1
        assert leftover_containers(docker_client, pid=os.getpid()) == []
    finally:
        box.remove()
