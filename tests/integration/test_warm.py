"""Warm containers and their pool against a real engine.

Each run sends a sandbox built here with tarpipe's header writer, and
reads the files back through `retar`, whose record holds each member's
mode and exact mtime.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path

import docker
import docker.errors
import pytest

from runners.container import (
    MANAGED_LABEL,
    PID_LABEL,
    ROLE_LABEL,
    leftover_containers,
)
from runners.errors import ContainerError
from runners.images import BUSYBOX, GCC
from runners.warm import (
    PIDNS_LABEL,
    ContainerPool,
    Listed,
    WarmContainer,
    WarmRun,
    pid_namespace,
)
from tarpipe import NOBODY, retar
from tarpipe._header import END_OF_ARCHIVE, Kind, member_header, padding
from tarpipe.errors import StreamConsumedError, TarPipeError
from tarpipe.filediff import FileState

pytestmark = pytest.mark.docker

MiB = 1024 * 1024
NS = 1_000_000_000

# name -> (mode, mtime in ns, data or None for a folder)
SANDBOX: dict[str, tuple[int, int, bytes | None]] = {
    "hiker.c": (0o644, 1_700_000_000_123_456_789, b"int answer;\n"),
    "before-1970.txt": (0o600, -100 * NS + 1, b"old\n"),
    "after-2038.txt": (0o640, 4_102_444_800 * NS + 1, b"new\n"),
    "lib": (0o750, 1_600_000_000_000_000_007, None),
    "lib/deep.h": (0o444, 1_700_000_000_999_999_999, b"#define X 1\n"),
}


def archive(script: str,
            members: dict[str, tuple[int, int, bytes | None]] | None = None
            ) -> Iterator[bytes]:
    """A tar stream of `members` and a cyber-dojo.sh running `script`."""
    entries = dict(members or {})
    entries["cyber-dojo.sh"] = (0o755, 1_700_000_001 * NS, script.encode())
    for name, (mode, mtime_ns, data) in entries.items():
        kind = Kind.DIRECTORY if data is None else Kind.FILE
        yield member_header(name, kind, mode=mode, mtime_ns=mtime_ns,
                            owner=NOBODY, size=len(data or b""))
        if data:
            yield data + padding(len(data))
    yield END_OF_ARCHIVE


def files_of(run: WarmRun) -> dict[str, FileState]:
    record: dict[str, FileState] = {}
    for _ in retar(run.files, owner=NOBODY, record=record):
        pass
    return record


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


def status_of(client: docker.DockerClient, container_id: str) -> str:
    try:
        return str(client.containers.get(container_id).status)
    except docker.errors.NotFound:
        return "gone"


def warm_containers(client: docker.DockerClient) -> list[str]:
    """This process's warm containers, still there."""
    return [container.short_id
            for container in leftover_containers(client, pid=os.getpid())
            if container.labels.get(ROLE_LABEL) == "warm"]


@pytest.fixture
def gcc(docker_client: docker.DockerClient) -> Iterator[WarmContainer]:
    with WarmContainer(docker_client, GCC) as container:
        yield container


@pytest.fixture
def busybox(docker_client: docker.DockerClient) -> Iterator[WarmContainer]:
    with WarmContainer(docker_client, BUSYBOX) as container:
        yield container


# ---- one run -------------------------------------------------------------


def test_a_run_returns_its_output_and_the_sandbox_to_the_nanosecond(
        gcc: WarmContainer) -> None:
    script = ("echo out; echo err >&2; "
              "touch -d @1234567890.123456789 stamped; chmod 700 stamped; "
              "exit 3")

    run = gcc.run(archive(script, SANDBOX), max_seconds=10)
    files = files_of(run)

    assert (run.result.stdout, run.result.stderr) == (b"out\n", b"err\n")
    assert (run.result.status, run.result.timed_out, run.failure) == (
        3, False, "")
    assert not (run.result.stdout_truncated or run.result.stderr_truncated)
    assert 0 < run.result.duration < 10
    assert sorted(files) == sorted([*SANDBOX, "cyber-dojo.sh", "stamped"])
    for name, (mode, mtime_ns, _) in SANDBOX.items():
        assert (files[name].mode, files[name].mtime_ns) == (mode, mtime_ns), \
            name
    assert (files["stamped"].mode, files["stamped"].mtime_ns) == (
        0o700, 1_234_567_890_123_456_789)
    with pytest.raises(StreamConsumedError):
        files_of(run)


def test_the_files_end_with_one_end_of_archive(gcc: WarmContainer) -> None:
    run = gcc.run(archive("true", SANDBOX), max_seconds=10)

    raw = b"".join(run.files)

    end = len(END_OF_ARCHIVE)
    assert raw.endswith(END_OF_ARCHIVE)
    assert raw[-end - 512:-end] != bytes(512)  # lib/deep.h's data
    assert len(raw) % 512 == 0


def test_busybox_runs_too_with_whole_seconds(busybox: WarmContainer) -> None:
    run = busybox.run(archive("echo hi; touch made; exit 1", SANDBOX),
                      max_seconds=10)
    files = files_of(run)

    assert (run.result.stdout, run.result.status) == (b"hi\n", 1)
    assert sorted(files) == sorted([*SANDBOX, "cyber-dojo.sh", "made"])
    assert files["hiker.c"].mtime_ns == 1_700_000_000 * NS
    assert files["hiker.c"].mode == 0o644
    assert files["lib/deep.h"].mode == 0o444


def test_what_the_script_leaves_running_is_killed_before_tar_reads(
        gcc: WarmContainer) -> None:
    # Alive, the loop would change `grow` under tar -c, which then fails.
    script = ("(while :; do echo x >> grow; done) >/dev/null 2>&1 & "
              "sleep 0.2; echo left")

    run = gcc.run(archive(script), max_seconds=10)
    files = files_of(run)

    assert (run.result.stdout, run.result.status) == (b"left\n", 0)
    assert files["grow"].size > 0


def member_names(stream: Iterable[bytes]) -> list[str]:
    record: dict[str, FileState] = {}
    for _ in retar(stream, owner=NOBODY, record=record):
        pass
    return list(record)


def test_a_run_lists_its_sandbox_and_sends_only_what_is_asked(
        gcc: WarmContainer) -> None:
    script = ("touch -d @1234567890.123456789 stamped; chmod 700 stamped; "
              "mkdir 'odd dir'; printf x > 'odd dir/a\nb'; "
              "printf y > \"$(printf 'bad\\377')\"; rm after-2038.txt")

    run = gcc.run(archive(script, SANDBOX), max_seconds=10)

    assert run.listing is not None
    assert sorted(run.listing) == sorted([
        "hiker.c", "before-1970.txt", "lib", "lib/deep.h", "cyber-dojo.sh",
        "stamped", "odd dir", "odd dir/a\nb", "bad\udcff"])
    for name in ("hiker.c", "before-1970.txt", "lib", "lib/deep.h"):
        mode, mtime_ns, data = SANDBOX[name]
        kind = "directory" if data is None else "file"
        assert run.listing[name][:2] == (kind, mode), name
        assert run.listing[name].mtime_ns == mtime_ns, name
    assert run.listing["stamped"] == Listed(
        "file", 0o700, 0, 1_234_567_890_123_456_789)
    assert run.listing["odd dir/a\nb"][::2] == ("file", 1)
    assert member_names(run.fetch(["stamped", "lib", "bad\udcff"])) == [
        "bad\udcff", "lib", "stamped"]
    with pytest.raises(StreamConsumedError):
        next(run.files)


def test_busybox_lists_nothing_and_sends_every_file(
        busybox: WarmContainer) -> None:
    run = busybox.run(archive("touch made", SANDBOX), max_seconds=10)

    assert run.listing is None
    assert sorted(member_names(run.fetch(["made"]))) == sorted(
        [*SANDBOX, "cyber-dojo.sh", "made"])


def test_a_script_reads_nothing_of_the_containers_input(
        gcc: WarmContainer, busybox: WarmContainer) -> None:
    # busybox tar reads to the end of its input, so the engine closes it
    # after the sandbox; GNU tar stops at the end-of-archive block and
    # the input stays open, empty, for the names asked for after the run.
    script = "timeout 1 cat /proc/1/fd/0 | wc -c"

    for container in (gcc, busybox):
        run = container.run(archive(script), max_seconds=5)

        assert (run.result.stdout, run.result.timed_out) == (b"0\n", False)
        run.close()


def test_a_warm_container_runs_once(gcc: WarmContainer) -> None:
    with gcc.run(archive("true"), max_seconds=10):
        pass
    with pytest.raises(ContainerError, match="once"):
        gcc.run(archive("true"), max_seconds=10)


def test_a_broken_sandbox_stream_raises_what_tar_said(
        gcc: WarmContainer, busybox: WarmContainer) -> None:
    for container in (gcc, busybox):
        with pytest.raises(ContainerError, match="tar"):
            container.run([b"this is not a tar stream\n" * 100],
                          max_seconds=10)


def test_files_tar_cannot_read_make_the_files_fail(gcc: WarmContainer) -> None:
    run = gcc.run(archive("echo secret > locked; chmod 000 locked"),
                  max_seconds=10)

    assert run.result.status == 0
    with pytest.raises(ContainerError, match="Permission denied"):
        files_of(run)


def test_stopping_early_closes_the_socket(gcc: WarmContainer) -> None:
    script = "head -c 5000000 /dev/urandom > big"
    run = gcc.run(archive(script), max_seconds=10)
    next(run.files)
    conn = gcc._conn
    assert conn is not None

    run.close()

    assert conn._sock.fileno() == -1
    with pytest.raises(StopIteration):
        next(run.files)


def test_an_error_while_sending_closes_the_socket(gcc: WarmContainer) -> None:
    def failing() -> Iterator[bytes]:
        yield next(archive("true"))
        raise RuntimeError("the caller's stream broke")

    conn = gcc._conn
    assert conn is not None
    with pytest.raises(RuntimeError, match="broke"):
        gcc.run(failing(), max_seconds=10)

    assert conn._sock.fileno() == -1


# ---- what a run cannot do --------------------------------------------------


def test_an_endless_loop_times_out_and_the_container_is_killed(
        docker_client: docker.DockerClient, gcc: WarmContainer) -> None:
    started = time.monotonic()
    run = gcc.run(archive("sleep 600 & while :; do :; done"), max_seconds=2)
    elapsed = time.monotonic() - started

    assert run.result.timed_out
    assert run.result.status is None
    assert 2 <= run.result.duration <= elapsed < 3
    assert status_of(docker_client, gcc.id) == "exited"
    with pytest.raises(ContainerError, match="timed out"):
        next(run.files)


def test_an_output_flood_is_capped_in_bounded_memory(
        gcc: WarmContainer) -> None:
    script = ("head -c 1000000000 /dev/zero; head -c 5000000 /dev/zero >&2; "
              "exit 4")
    runs: list[WarmRun] = []

    peak = peak_memory(lambda: runs.append(gcc.run(
        archive(script), max_seconds=60, stdout_cap=1000, stderr_cap=2000)))
    result = runs[0].result

    assert (result.stdout, result.stdout_truncated) == (bytes(1000), True)
    assert (result.stderr, result.stderr_truncated) == (bytes(2000), True)
    assert (result.status, result.timed_out) == (4, False)
    assert "cyber-dojo.sh" in files_of(runs[0])
    assert peak < 16 * MiB


def test_output_exactly_at_the_cap_is_not_truncated(
        busybox: WarmContainer) -> None:
    run = busybox.run(archive("printf 12345; printf 1234567 >&2"),
                      max_seconds=10, stdout_cap=5, stderr_cap=6)

    assert (run.result.stdout, run.result.stdout_truncated) == (b"12345",
                                                                False)
    assert (run.result.stderr, run.result.stderr_truncated) == (b"123456",
                                                                True)
    run.close()


# The container's init (pid 1) runs as the script's user, and holds the
# container's stdout and stderr: a way into the driver's channels.
INIT = "/proc/1/fd"


@pytest.mark.parametrize(("forgery", "failure"), [
    (f"echo garbage >{INIT}/2", "garbled"),
    (f"printf 'result %032x 0 2 0\\nhi' 7 >{INIT}/2", "forged"),
    (f"head -c 100000000 /dev/zero >{INIT}/2", "garbled"),
    (f"printf 'start %032x\\n' 7 >{INIT}/2", "'start' where result"),
    ("kill -9 -1", "ended without a result"),
])
def test_a_forged_or_garbled_report_is_a_clean_failure(
        docker_client: docker.DockerClient, gcc: WarmContainer,
        forgery: str, failure: str) -> None:
    runs: list[WarmRun] = []

    peak = peak_memory(lambda: runs.append(gcc.run(
        archive(forgery + "; sleep 1"), max_seconds=10)))
    run = runs[0]

    assert failure in run.failure
    assert (run.result.status, run.result.timed_out) == (None, False)
    assert peak < 16 * MiB
    assert status_of(docker_client, gcc.id) == "exited"
    with pytest.raises(ContainerError, match="failed"):
        next(run.files)


def test_junk_forged_into_the_files_fails_them(gcc: WarmContainer) -> None:
    run = gcc.run(archive(f"echo junk >{INIT}/1"), max_seconds=10)

    assert run.result.status == 0
    with pytest.raises(TarPipeError):
        files_of(run)


# ---- the pool -------------------------------------------------------------


def wait_for_stock(pool: ContainerPool, image: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while pool.stock(image) < count:
        assert time.monotonic() < deadline, "the pool did not refill"
        time.sleep(0.02)


def test_the_pool_starts_a_stock_after_the_first_take(
        docker_client: docker.DockerClient) -> None:
    with ContainerPool(docker_client, size=2) as pool:
        assert pool.stock(BUSYBOX) == 0
        first = pool.take(BUSYBOX)
        wait_for_stock(pool, BUSYBOX, 2)
        second = pool.take(BUSYBOX)
        assert pool.stock(BUSYBOX) == 1

        for container in (first, second):
            with container.run(archive("echo $((6 * 7))"),
                               max_seconds=10) as run:
                assert run.result.stdout == b"42\n"
                assert "cyber-dojo.sh" in files_of(run)
            pool.give_back(container)
        assert pool.stock(GCC) == 0

    assert warm_containers(docker_client) == []


def test_close_removes_idle_and_used_containers(
        docker_client: docker.DockerClient) -> None:
    pool = ContainerPool(docker_client, size=2)
    used = pool.take(BUSYBOX)
    unused = pool.take(GCC)
    wait_for_stock(pool, BUSYBOX, 2)
    with used.run(archive("true"), max_seconds=10):
        pass
    pool.give_back(used)
    pool.give_back(unused)

    pool.close()

    assert warm_containers(docker_client) == []
    with pytest.raises(ContainerError, match="closed"):
        pool.take(BUSYBOX)


def some_dead_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 300, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("every pid is taken")


def labelled(client: docker.DockerClient, pid: int,
             namespace: str) -> str:
    container = client.containers.create(
        BUSYBOX, ["sleep", "600"], network_disabled=True,
        network_mode="none",
        labels={MANAGED_LABEL: "1", ROLE_LABEL: "warm", PID_LABEL: str(pid),
                PIDNS_LABEL: namespace})
    return str(container.id)


def test_a_new_pool_removes_what_a_dead_process_left_and_only_that(
        docker_client: docker.DockerClient) -> None:
    here = pid_namespace()
    assert here
    dead = labelled(docker_client, some_dead_pid(), here)
    alive = labelled(docker_client, 1, here)
    elsewhere = labelled(docker_client, some_dead_pid(), "another.host")
    try:
        ContainerPool(docker_client).close()

        assert status_of(docker_client, dead) == "gone"
        assert status_of(docker_client, alive) == "created"
        assert status_of(docker_client, elsewhere) == "created"
    finally:
        for container_id in (dead, alive, elsewhere):
            with suppress(docker.errors.NotFound):
                docker_client.api.remove_container(container_id, force=True)


def test_runs_through_the_pool_in_threads(
        docker_client: docker.DockerClient) -> None:
    def one(index: int) -> bytes:
        container = pool.take(BUSYBOX)
        try:
            with container.run(archive(f"echo {index}"),
                               max_seconds=10) as run:
                files_of(run)
                return run.result.stdout
        finally:
            pool.give_back(container)

    with ContainerPool(docker_client, size=2) as pool, \
            concurrent.futures.ThreadPoolExecutor(4) as threads:
        outputs: Iterable[bytes] = threads.map(one, range(8))
        assert list(outputs) == [b"%d\n" % index for index in range(8)]

    assert warm_containers(docker_client) == []
