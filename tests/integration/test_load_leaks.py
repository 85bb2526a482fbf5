"""Five hundred runs at once, and nothing left behind: the leak test.

500 runs, 16 at a time, through the three runners (most through the tmp
runner, the cheapest), mixing successes, failures, timeouts and faults:
a file over the size limit, a FIFO, a symlink to /etc/passwd, a script
that SIGKILLs its own shell, one that SIGKILLs every process it may (the
driver too), an output flood, a process left running.  Each run must end
as its kind says: a wrong outcome under load is a bug too.

Afterwards, with the runners closed: no container of this process is
left, and the katas' data container (which carries no pid label, being
shared) runs nothing but its init and `sleep`, so no exec session is
left either; the katas volume holds only kata folders, each exactly as a
finished run leaves it; the katas-volume root the same; no temporary
file is left (this process's tempfile directory is a fresh one for the
test, so other work sharing /tmp cannot blur the check); no thread is
left, nor any file or socket beyond those open before; and the resident
memory is within MEMORY_SLACK of what it was after a warm-up, which
made every kind of run on every runner once (the first run of each
path fills caches, pools and malloc arenas: that is not a leak).
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from runners import (
    ContainerLimits,
    KatasDataContainerRunner,
    KatasVolumeRunner,
    RunResult,
    TmpRunner,
)
from runners.container import MANAGED_LABEL, PID_LABEL, ROLE_LABEL
from runners.images import BUSYBOX
from tarpipe import Limits, Owner
from tests.conftest import remove_katas_volume

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

KiB = 1024
MiB = 1024 * KiB
RUNS = 500
THREADS = 16
SEED = 20240607
OUTSIDE = Owner(4321, 4321, "cyber-dojo", "cyber-dojo")
# A small file size limit, so that breaking it costs no memory.
LIMITS = ContainerLimits(file_bytes=1 * MiB)
# The data runner refuses a file of half that: the big file is rejected.
ARCHIVE_LIMITS = Limits(max_file_bytes=512 * KiB)
POOL_SIZE = 4
DATA_KATAS = 16
VOLUME_KATAS = 8
OUTPUT_CAP = 50 * KiB
# Resident memory may grow this much between the warm-up and the end.
MEMORY_SLACK = 15 * MiB
# How long the engine may take to reap what a closed socket ended.
SETTLE_SECONDS = 10.0

TMP, DATA, VOLUME = "tmp", "data", "volume"
RUNNER_WEIGHTS = {TMP: 60, DATA: 25, VOLUME: 15}
AnyRunner = TmpRunner | KatasDataContainerRunner | KatasVolumeRunner


@dataclass(frozen=True)
class Kind:
    """A kind of run: its script (given the run's index), its time limit,
    and how often it comes, in percent."""

    name: str
    script: Callable[[int], str]
    weight: int
    max_seconds: float = 10


KINDS = [
    Kind("success", lambda i: f"echo ok {i}\n", 30),
    Kind("failure", lambda i: f"echo no {i}; exit 3\n", 12),
    Kind("timeout", lambda i: "echo started; sleep 30\n", 8, max_seconds=1),
    Kind("big-file", lambda i: "head -c 2097152 /dev/zero > big\n", 8),
    Kind("fifo", lambda i: "mkfifo pipe\n", 8),
    Kind("symlink", lambda i: "ln -sf /etc/passwd pw\n", 8),
    Kind("kill-self", lambda i: "echo before; kill -9 $$\n", 8),
    Kind("kill-all", lambda i: "kill -9 -1\n", 6),
    Kind("flood", lambda i: "yes | head -c 5000000\n", 6),
    Kind("orphan", lambda i: "sleep 60 >/dev/null 2>&1 & echo spawned\n", 6),
]
assert sum(kind.weight for kind in KINDS) == 100


@dataclass(frozen=True)
class Expected:
    """What a run's result must say; `rejected` is a part of its text."""

    status: int | None
    stdout: str = ""
    stdout_truncated: bool = False
    timed_out: bool = False
    rejected: str = ""


def expected(kind: str, runner: str, index: int) -> Expected:
    """The outcome of run `index` of `kind` on `runner`."""
    if kind == "success":
        return Expected(0, f"ok {index}\n")
    if kind == "failure":
        return Expected(3, f"no {index}\n")
    if kind == "timeout":
        # A timed-out warm run has no output: it stays in the container.
        return Expected(None, timed_out=True)
    if kind == "big-file":
        # SIGXFSZ (128 + 25) stops `head` at 1 MiB; only the data runner
        # refuses a file that big.
        return Expected(153, rejected="max_file_bytes" if runner == DATA else "")
    if kind == "fifo":
        return Expected(0, rejected="FIFO" if runner != VOLUME
                        else "special file not allowed: removed ['pipe']")
    if kind == "symlink":
        # In place, a link stays (it is never followed from outside).
        return Expected(0, rejected="" if runner == VOLUME
                        else "symlink not allowed")
    if kind == "kill-self":
        return Expected(137, "before\n")
    if kind == "kill-all":
        return Expected(None, rejected="the driver ended without a result")
    if kind == "flood":
        return Expected(0, "y\n" * (OUTPUT_CAP // 2), stdout_truncated=True)
    assert kind == "orphan"
    return Expected(0, "spawned\n")


def mismatch(result: RunResult, want: Expected) -> str:
    """How `result` differs from `want`; empty when it does not."""
    got = Expected(result.status, result.stdout, result.stdout_truncated,
                   result.timed_out, result.rejected)
    if (got.status, got.stdout, got.stdout_truncated, got.timed_out) != (
            want.status, want.stdout, want.stdout_truncated, want.timed_out):
        return f"got {_short(got)}, want {_short(want)}"
    if want.rejected not in result.rejected or (
            not want.rejected and result.rejected):
        return f"rejected {result.rejected!r}, want {want.rejected!r}"
    return ""


def _short(outcome: Expected) -> str:
    return (f"status={outcome.status} timed_out={outcome.timed_out} "
            f"stdout={outcome.stdout[:40]!r} "
            f"truncated={outcome.stdout_truncated}")


@dataclass(frozen=True)
class Job:
    index: int
    runner: str
    kind: Kind

    @property
    def kata_id(self) -> str:
        if self.runner == DATA:
            return f"d{self.index % DATA_KATAS}"
        if self.runner == VOLUME:
            return f"v{self.index % VOLUME_KATAS}"
        return f"t{self.index}"


def jobs() -> tuple[list[Job], list[Job]]:
    """The warm-up (every kind on every runner once), then the rest."""
    rng = random.Random(SEED)
    pairs = [(runner, kind) for runner in RUNNER_WEIGHTS for kind in KINDS]
    rng.shuffle(pairs)
    more = zip(rng.choices(list(RUNNER_WEIGHTS), list(RUNNER_WEIGHTS.values()),
                           k=RUNS - len(pairs)),
               rng.choices(KINDS, [kind.weight for kind in KINDS],
                           k=RUNS - len(pairs)), strict=True)
    numbered = [Job(index, runner, kind)
                for index, (runner, kind) in enumerate([*pairs, *more])]
    return numbered[:len(pairs)], numbered[len(pairs):]


# ---- what the process holds ------------------------------------------------


def status_kib(field: str) -> int:
    """A field of /proc/self/status, in KiB (VmRSS: resident memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def settled_rss_mib() -> float:
    gc.collect()
    return status_kib("VmRSS") / KiB


def open_fds(client: docker.DockerClient) -> int:
    """Files and sockets open in this process, once the client's idle
    connections are closed.

    docker-py keeps a connection pool per URL (up to 25 of them, each up
    to 10 connections), so the sockets it keeps idle depend on the runs'
    URLs and concurrency, not on a leak; closing them leaves a count that
    any socket a runner failed to close would raise.
    """
    client.api.close()
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def eventually(check: Callable[[], list[str]]) -> list[str]:
    """`check`'s complaints once it has none, or after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while (complaints := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return complaints


# ---- what the engine and the disks hold -------------------------------------


def containers_of_this_process(client: docker.DockerClient) -> list[str]:
    labels = [f"{MANAGED_LABEL}=1", f"{PID_LABEL}={os.getpid()}"]
    found = client.api.containers(all=True, filters={"label": labels})
    return [f"{entry['Id'][:12]} {entry['Labels'].get(ROLE_LABEL)}"
            for entry in found]


def stray_processes(client: docker.DockerClient, name: str) -> list[str]:
    """Processes in the data container but its init and `sleep infinity`.

    Asked of the engine (`top`), which starts no exec to answer.
    """
    top = client.api.top(name)
    command = top["Titles"].index("CMD")
    commands = [row[command] for row in top["Processes"] or []]
    return [each for each in commands
            if not each.startswith("/sbin/docker-init")
            and each != "sleep infinity"]


def running_execs(client: docker.DockerClient, name: str) -> list[str]:
    """The execs still running in container `name` (finished ones stay
    listed for a while)."""
    ids = client.api.inspect_container(name)["ExecIDs"] or []
    running = []
    for exec_id in ids:
        with contextlib.suppress(docker.errors.NotFound):
            if client.api.exec_inspect(exec_id)["Running"]:
                running.append(exec_id[:12])
    return running


def exec_text(client: docker.DockerClient, name: str,
              argv: list[str]) -> str:
    """The output of `argv` run in container `name` (an exec of ours)."""
    output = client.containers.get(name).exec_run(argv).output
    assert isinstance(output, bytes)
    return output.decode()


def katas_volume_strays(client: docker.DockerClient, name: str) -> list[str]:
    """What the katas volume holds beyond a finished run's kata folders.

    Each kata: `git`, one `s.*` folder, `sandbox` linking to it, and
    `visible.json`; and nothing half-written (`*.new`) anywhere.
    """
    listing = exec_text(client, name, [
        "find", "/katas", "-mindepth", "1", "-maxdepth", "2",
        "-printf", "%P %y %l\\n"])
    half = exec_text(client, name, ["find", "/katas", "-name", "*.new"])
    strays = [f"half-written: {line}" for line in half.split()]
    katas: dict[str, dict[str, tuple[str, str]]] = {}
    for line in listing.splitlines():
        path, kind, target = line.split(" ", 2)
        kata, _, entry = path.partition("/")
        if not entry:
            if kind != "d":
                strays.append(f"not a kata folder: {path} ({kind})")
            katas.setdefault(kata, {})
        else:
            katas.setdefault(kata, {})[entry] = (kind, target)
    for kata, entries in sorted(katas.items()):
        folders = [e for e in entries if e.startswith("s.")]
        names = sorted("s.*" if e.startswith("s.") else e for e in entries)
        if names != ["git", "s.*", "sandbox", "visible.json"]:
            strays.append(f"kata {kata}: {sorted(entries)}")
        elif entries["sandbox"] != ("l", folders[0]):
            strays.append(f"kata {kata}: sandbox is {entries['sandbox']}, "
                          f"not a link to {folders[0]}")
    return strays


def katas_root_strays(root: Path) -> list[str]:
    """What the katas-volume root holds beyond its kata folders."""
    strays = []
    for kata in sorted(root.iterdir()):
        entries = sorted(p.name for p in kata.iterdir())
        if not kata.is_dir() or entries != ["history.git", "lock", "sandbox"]:
            strays.append(f"{kata.name}: {entries}")
            continue
        strays += [f"{kata.name}: {p.relative_to(kata)}"
                   for p in (kata / "history.git").rglob("*")
                   if p.name.endswith(".lock") or "tmp" in p.name]
    return strays


@pytest.fixture
def katas_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A volume of this test; it and its data container go after."""
    name = f"tarpipe-load-{os.getpid()}"
    yield name
    remove_katas_volume(docker_client, name)


@pytest.fixture
def private_tempdir(tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory that tempfile uses for this test alone."""
    folder = tmp_path / "tempdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    assert tempfile.gettempdir() == str(folder)
    return folder


def test_500_mixed_runs_16_at_a_time_leave_nothing_behind(
    docker_client: docker.DockerClient, katas_volume: str, tmp_path: Path,
    private_tempdir: Path, record_property: Callable[[str, object], None],
) -> None:
    threads_before = set(threading.enumerate())
    fds_before = open_fds(docker_client)
    warm_up, rest = jobs()
    katas_root = tmp_path / "katas"
    data_name = f"{katas_volume}-data"
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        runners: dict[str, AnyRunner] = {
            TMP: stack.enter_context(TmpRunner(
                docker_client, limits=LIMITS, pool_size=POOL_SIZE)),
            DATA: stack.enter_context(KatasDataContainerRunner(
                katas_volume, docker_client, owner=OUTSIDE, limits=LIMITS,
                archive_limits=ARCHIVE_LIMITS, pool_size=POOL_SIZE)),
            VOLUME: stack.enter_context(KatasVolumeRunner(
                katas_root, docker_client, owner=OUTSIDE, limits=LIMITS)),
        }

        def attempt(job: Job) -> str:
            """Run `job`; what was wrong with its outcome, if anything."""
            try:
                result = runners[job.runner].run(
                    job.kata_id, BUSYBOX,
                    {"cyber-dojo.sh": job.kind.script(job.index)},
                    max_seconds=job.kind.max_seconds)
            except Exception as error:
                return f"run {job.index} raised {error!r}"
            wrong = mismatch(result, expected(job.kind.name, job.runner,
                                              job.index))
            return wrong and (f"run {job.index} ({job.kind.name} on "
                              f"{job.runner}, kata {job.kata_id}): {wrong}")

        with ThreadPoolExecutor(THREADS) as pool:
            wrong = list(pool.map(attempt, warm_up))
            rss_start = settled_rss_mib()
            wrong += pool.map(attempt, rest)
        rss_end = settled_rss_mib()
    rss_closed = settled_rss_mib()
    seconds = time.monotonic() - started
    problems = [each for each in wrong if each]

    problems += [f"container left: {each}"
                 for each in containers_of_this_process(docker_client)]
    problems += [f"in the data container: {each}" for each in eventually(
        lambda: stray_processes(docker_client, data_name))]
    problems += [f"exec still running: {each}" for each in eventually(
        lambda: running_execs(docker_client, data_name))]
    problems += katas_volume_strays(docker_client, data_name)
    problems += katas_root_strays(katas_root)
    problems += [f"temporary file left: {p.name}"
                 for p in private_tempdir.iterdir()]
    problems += [f"thread left: {each}" for each in eventually(
        lambda: [each.name for each in threading.enumerate()
                 if each not in threads_before])]
    fds_after = open_fds(docker_client)
    if fds_after > fds_before:
        problems.append(f"open files: {fds_before} before, {fds_after} after")
    if rss_end - rss_start > MEMORY_SLACK / MiB:
        problems.append(f"memory grew {rss_end - rss_start:.1f} MiB")

    per_kind = Counter(job.kind.name for job in warm_up + rest)
    per_runner = Counter(job.runner for job in warm_up + rest)
    figures = {"seconds": round(seconds, 1), "rss_start_mib": round(rss_start, 1),
               "rss_end_mib": round(rss_end, 1),
               "rss_closed_mib": round(rss_closed, 1),
               "rss_peak_mib": round(status_kib("VmHWM") / KiB, 1),
               "fds": f"{fds_before}->{fds_after}"}
    for key, value in figures.items():
        record_property(key, value)
    print(f"\n{RUNS} runs, {THREADS} at a time, in {seconds:.1f} s: "
          f"{dict(per_runner)}; {dict(per_kind)}; RSS after warm-up "
          f"{rss_start:.1f} MiB, at the end {rss_end:.1f} MiB, closed "
          f"{rss_closed:.1f} MiB, peak {figures['rss_peak_mib']} MiB; "
          f"fds {fds_before}->{fds_after}; {len(problems)} problems")
    assert not problems, "\n".join(problems[:30])
