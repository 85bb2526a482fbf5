"""Faults of the machine around a run: issue 6.

The katas-data-container runner promises that a run either happens
whole or not at all.  Here its process is SIGKILLed at random moments
of a run, many of them while the run's files come back, and each time
the kata must be in a state a whole run could leave: as before, as
after, or as before with only the visible files written (what a
timed-out run leaves).  Half the kills fall anywhere in a run, half in
its last quarter, where the files come back and the sandbox is swapped:
300 small files make that swap's clean-up long enough to be hit.

Every run is deterministic, so "after" is known without letting the
run finish: generation `g` writes its number as a visible file, with
the clock pinned to `clock_of(g)`, and `cyber-dojo.sh` rewrites
about 0.9 MB of files (as tar): contents from `data_of(g, i)` and the
small-file line, mtime `touched_of(g)`.  The sandbox stays under 1 MiB
of tar: a bigger one can trip the warm pool's early-stream cap.
The model (`after_run`) is checked against every run that the parent
makes itself, so it cannot be wrong unnoticed.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import docker
import docker.errors
import pytest

from runners import KatasDataContainerRunner
from runners.container import MANAGED_LABEL, PID_LABEL, remove_container
from runners.images import BUSYBOX, GCC
from runners.warm import dead_leftovers
from tarpipe import Owner
from tarpipe.filediff import FileState, file_state
from tests.conftest import remove_katas_volume

pytestmark = pytest.mark.docker

OUTSIDE = Owner(4321, 4321, "cyber-dojo", "cyber-dojo")
KATA = "faulty"
# The child's first run, on a kata of its own, starts its pool.
WARM_UP_KATA = "warm-up"
ROUNDS = 50
CALIBRATION_RUNS = 3
SEED = 20240606
DATA_FILES = 2
DATA_BYTES = 150_000
# Small files make the old sandbox slow to remove: the last step of a
# run, after the swap.
SMALL_FILES = 300
CLOCK_0 = 1_700_000_000 * 10**9
TOUCHED_0 = 1_600_000_000
EXEC_WAIT = 10.0
# Each kill must show both outcomes at least this often to mean anything.
AT_LEAST = 3

# Rewrites every data file with this generation's content and stamps
# them with an exact, known mtime (seconds and nanoseconds of `g`).
SCRIPT = f"""set -e
g=$(cat generation.txt)
i=0
while [ $i -lt {DATA_FILES} ]; do
  yes "g=$g file=$i" | head -c {DATA_BYTES} > data$i.bin
  i=$((i + 1))
done
i=0
while [ $i -lt {SMALL_FILES} ]; do
  echo "g=$g small=$i" > small$i.txt
  i=$((i + 1))
done
ns=$(printf %09d $((g * 7919 % 1000000000)))
touch -d "@$(({TOUCHED_0} + g)).$ns" data*.bin small*.txt
echo "generation $g"
""".encode()


def visible(generation: int) -> dict[str, bytes]:
    """The visible files sent with run `generation`."""
    return {"cyber-dojo.sh": SCRIPT, "generation.txt": f"{generation}\n".encode()}


def clock_of(generation: int) -> int:
    """The runner's pinned clock during run `generation`, in ns."""
    return CLOCK_0 + generation * 10**9 + 17


def touched_of(generation: int) -> int:
    """The mtime, in ns, that run `generation` gives the data files."""
    return (TOUCHED_0 + generation) * 10**9 + generation * 7919 % 10**9


def data_of(generation: int, index: int) -> bytes:
    """What `yes | head` writes into data file `index` in `generation`."""
    line = f"g={generation} file={index}\n".encode()
    return (line * (DATA_BYTES // len(line) + 1))[:DATA_BYTES]


def with_visible(before: Mapping[str, FileState],
                 generation: int) -> dict[str, FileState]:
    """`before` with the visible files of `generation` written into it."""
    state = dict(before)
    for name, content in visible(generation).items():
        mode = 0o755 if name.endswith(".sh") else 0o644
        written = file_state(content, mode=mode,
                             mtime_ns=clock_of(generation))
        if name not in state or state[name].digest != written.digest:
            state[name] = written
    return state


def after_run(before: Mapping[str, FileState],
              generation: int) -> dict[str, FileState]:
    """The sandbox that a whole run of `generation` leaves after `before`."""
    state = with_visible(before, generation)
    for index in range(DATA_FILES):
        state[f"data{index}.bin"] = file_state(
            data_of(generation, index), mtime_ns=touched_of(generation))
    for index in range(SMALL_FILES):
        state[f"small{index}.txt"] = file_state(
            f"g={generation} small={index}\n".encode(),
            mtime_ns=touched_of(generation))
    return state


# ---- the child: a runner that runs the kata until it is killed ----------


def run_until_killed(volume: str, conn: Connection) -> None:
    """The child: say "ready", then run each generation it is sent."""
    client = docker.from_env()
    runner = KatasDataContainerRunner(volume, client, owner=OUTSIDE,
                                      pool_size=1)
    runner.run(WARM_UP_KATA, GCC, {"cyber-dojo.sh": b"true\n"})
    conn.send("ready")
    while True:
        generation = conn.recv()
        runner.clock = functools.partial(clock_of, generation)
        result = runner.run(KATA, GCC, visible(generation))
        conn.send(("done", generation, result.status))


class Child:
    """One child process and our end of its pipe."""

    def __init__(self, volume: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=run_until_killed, args=(volume, theirs), daemon=True)
        self.process.start()
        theirs.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def wait_ready(self) -> None:
        assert self.conn.poll(60), "the child never became ready"
        assert self.conn.recv() == "ready"

    def run(self, generation: int) -> float:
        """Let the child run `generation` whole; how long it took."""
        started = time.monotonic()
        self.conn.send(generation)
        assert self.conn.poll(60), "the child's run never ended"
        assert self.conn.recv() == ("done", generation, 0)
        return time.monotonic() - started

    def kill_after(self, generation: int, delay: float) -> bool:
        """Start `generation`, SIGKILL the child `delay` s later.

        True if the run had ended (and said so) before the kill.
        """
        self.conn.send(generation)
        time.sleep(delay)
        self.kill()
        try:
            said = self.conn.recv() if self.conn.poll(0) else None
        except EOFError:  # it died before it said anything
            said = None
        finally:
            self.conn.close()
        assert said in (None, ("done", generation, 0)), said
        return said is not None

    def kill(self) -> None:
        self.process.kill()
        self.process.join()


# ---- the parent's checks --------------------------------------------------


def running_execs(client: docker.DockerClient, container: str) -> list[str]:
    """The ids of the execs running in `container` now."""
    return list(client.api.inspect_container(container)["ExecIDs"] or [])


def wait_for_execs(client: docker.DockerClient, exec_ids: list[str]) -> None:
    """Wait until the execs a killed child left have ended."""
    deadline = time.monotonic() + EXEC_WAIT
    for exec_id in exec_ids:
        while client.api.exec_inspect(exec_id)["Running"]:
            assert time.monotonic() < deadline, f"exec {exec_id} runs on"
            time.sleep(0.01)


def containers_of(client: docker.DockerClient, pid: int) -> list[str]:
    """The ids of the containers process `pid` made, still there.

    Not `leftover_containers`: it inspects each container it lists, and
    fails when one is removed meanwhile (as a new child's pool does).
    """
    labels = [f"{MANAGED_LABEL}=1", f"{PID_LABEL}={pid}"]
    found = client.api.containers(all=True, filters={"label": labels})
    return [str(entry["Id"]) for entry in found]


def remove_dead_childs(client: docker.DockerClient, pid: int) -> int:
    """Remove the warm containers the killed child `pid` left; how many.

    A create the child sent just before it died may still complete in
    the engine after the first sweep, so a later sweep takes that too.
    """
    removed, deadline = 0, time.monotonic() + 3
    while True:
        ours = set(containers_of(client, pid))
        dead = [i for i in dead_leftovers(client) if i in ours]
        for container_id in dead:
            remove_container(client, container_id)
        removed += len(dead)
        if not containers_of(client, pid) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not containers_of(client, pid)
    return removed


def kata_folder(client: docker.DockerClient, volume: str) -> list[str]:
    """The names in the kata's folder, sorted, sandboxes as `s.*`."""
    data = client.containers.get(f"{volume}-data")
    listing = data.exec_run(["ls", "-A", f"/katas/{KATA}"]).output
    assert isinstance(listing, bytes)
    names = listing.decode().split()
    return sorted("s.*" if name.startswith("s.") else name for name in names)


def classify(state: Mapping[str, FileState],
             before: Mapping[str, FileState], generation: int) -> str:
    if state == before:
        return "old"
    if state == with_visible(before, generation):
        return "visible"
    if state == after_run(before, generation):
        return "new"
    return "other"


@pytest.fixture(scope="module")
def volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A volume of this test process; it and its data container go after."""
    name = f"tarpipe-faults-{os.getpid()}"
    yield name
    remove_katas_volume(docker_client, name)


# 65 to 100 s here, more on a busy host: the suite's 120 s is too tight.
@pytest.mark.timeout(300)
def test_a_runner_killed_mid_run_leaves_the_kata_whole(
    docker_client: docker.DockerClient, volume: str
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    with Checker(docker_client, volume) as checker:
        window = checker.calibrate()
        for index in range(ROUNDS):
            # Every other kill falls in the last quarter of a run, where its
            # files come back and the sandbox is swapped.
            checker.kill_one(window * rng.uniform(index % 2 * 0.75, 1))
    counts = checker.outcomes
    print(f"\n{ROUNDS} kills in a {window * 1000:.0f} ms window: "
          f"{dict(counts)}; {checker.removed} containers removed; "
          f"{time.monotonic() - started:.1f} s")
    assert not checker.others, checker.others
    # "visible" is the old sandbox too, with this run's visible files in.
    assert counts["old"] + counts["visible"] >= AT_LEAST, counts
    assert counts["new"] >= AT_LEAST, counts
    left = [i[:12] for pid in checker.pids
            for i in containers_of(docker_client, pid)]
    assert not left, f"containers of killed children left: {left}"


def test_runners_taking_turns_on_one_kata_keep_every_commit(
    docker_client: docker.DockerClient, volume: str
) -> None:
    kata_id = f"turns-{os.getpid()}"
    runs = [{"cyber-dojo.sh": f"echo {turn}\n"} for turn in range(3)]
    with KatasDataContainerRunner(volume, docker_client,
                                  owner=OUTSIDE, pool_size=0) as first, \
            KatasDataContainerRunner(volume, docker_client,
                                     owner=OUTSIDE, pool_size=0) as second:
        for runner, files in zip((first, second, first), runs, strict=True):
            assert runner.run(kata_id, GCC, files).status == 0
        history = second.history(kata_id)
    assert [dict(entry.files) for entry in history] == \
        [{name: text.encode() for name, text in run.items()} for run in runs]


class Checker:
    """The parent's side: its runner, the child, the expected history."""

    def __init__(self, client: docker.DockerClient, volume: str) -> None:
        self.client = client
        self.volume = volume
        self.generation = -1
        self.committed: list[int] = []
        self.current: dict[str, FileState] = {}
        self.outcomes: Counter[str] = Counter()
        self.others: list[str] = []
        self.pids: list[int] = []
        self.removed = 0
        self.child: Child | None = None

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.child is not None:
            self.child.kill()
            self.cleared(self.child.pid)
            self.child = None

    def calibrate(self) -> float:
        """Make the kata; the median time of a child's whole run."""
        with self.fresh_runner() as runner:
            self.parent_run(runner, {})
        times = []
        for _ in range(CALIBRATION_RUNS):
            # Timed as a killed one would run: a new child's first run.
            self.child = Child(self.volume)
            self.child.wait_ready()
            times.append(self.child.run(self.next_generation(committed=True)))
            self.__exit__()
        self.child = Child(self.volume)
        with self.fresh_runner() as runner:
            self.current = runner.snapshot(KATA)
        self.child.wait_ready()
        return statistics.median(times)

    def fresh_runner(self) -> KatasDataContainerRunner:
        """A runner as a restarted service has: nothing in memory.

        No pool: its one run starts its container.
        """
        return KatasDataContainerRunner(self.volume, self.client,
                                        owner=OUTSIDE, pool_size=0)

    def kill_one(self, delay: float) -> None:
        """Kill the child `delay` s into a run; check; start the next."""
        child, self.child = self.child, None
        assert child is not None
        generation = self.next_generation(committed=False)
        before = self.current
        ended = child.kill_after(generation, delay)
        leftover_execs = running_execs(self.client, f"{self.volume}-data")
        self.child = Child(self.volume)
        wait_for_execs(self.client, leftover_execs)
        self.cleared(child.pid)

        with self.fresh_runner() as runner:
            state = runner.snapshot(KATA)
            self.count(classify(state, before, generation), ended,
                       f"generation {generation} killed at {delay:.3f} s")
            self.parent_run(runner, state)
        self.child.wait_ready()

    def count(self, outcome: str, ended: bool, what: str) -> None:
        """Count the outcome of a kill; a committed run joins the history."""
        if ended:  # the kill came after the run: not a test of anything
            assert outcome == "new", f"{what}: {outcome}"
            outcome = "late"
        self.outcomes[outcome] += 1
        if outcome == "other":
            self.others.append(what)
        if outcome in ("new", "late"):
            self.committed.append(self.generation)

    def next_generation(self, *, committed: bool) -> int:
        self.generation += 1
        if committed:
            self.committed.append(self.generation)
        return self.generation

    def cleared(self, pid: int) -> None:
        """Remove the containers the dead child `pid` left; none may stay."""
        self.pids.append(pid)
        self.removed += remove_dead_childs(self.client, pid)

    def parent_run(self, runner: KatasDataContainerRunner,
                   before: Mapping[str, FileState]) -> None:
        """A run of the next generation works, as the model says."""
        generation = self.next_generation(committed=True)
        runner.clock = functools.partial(clock_of, generation)
        result = runner.run(KATA, GCC, visible(generation))
        assert (result.status, result.stdout) == (
            0, f"generation {generation}\n"), result
        self.current = runner.snapshot(KATA)
        assert self.current == after_run(before, generation)
        history = runner.history(KATA)
        assert [dict(entry.files) for entry in history] == \
            [visible(g) for g in self.committed]
        assert kata_folder(self.client, self.volume) == \
            ["git", "s.*", "sandbox", "visible.json"]


@pytest.fixture
def tiny_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A 3 MiB katas volume (tmpfs), so that filling it is quick."""
    name = f"tarpipe-tiny-{os.getpid()}"
    docker_client.volumes.create(name, driver="local", driver_opts={
        "type": "tmpfs", "device": "tmpfs", "o": "size=3m"})
    yield name
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.containers.get(f"{name}-data").remove(force=True)
    docker_client.volumes.get(name).remove(force=True)


def test_a_full_katas_volume_is_a_clear_error_and_the_kata_stays_whole(
    docker_client: docker.DockerClient, tiny_volume: str
) -> None:
    with KatasDataContainerRunner(tiny_volume, docker_client,
                                  owner=OUTSIDE, pool_size=0) as runner:
        first = {"cyber-dojo.sh": "echo kept > kept.txt\n"}
        assert runner.run("full", BUSYBOX, first).status == 0
        before = runner.snapshot("full")

        filler = {"cyber-dojo.sh": "head -c 5000000 /dev/zero > big\n"}
        result = runner.run("full", BUSYBOX, filler)
        after = runner.snapshot("full")

        assert "No space left on device" in result.rejected
        assert result.created == ()
        assert {p: s for p, s in after.items() if p != "cyber-dojo.sh"} == \
            {p: s for p, s in before.items() if p != "cyber-dojo.sh"}
        again = runner.run("full", BUSYBOX, {"cyber-dojo.sh": "cat kept.txt\n"})
        assert (again.status, again.stdout, again.rejected) == (0, "kept\n", "")
        assert len(runner.history("full")) == 3
