"""Time the runners side by side with the ways cyber-dojo ran katas before.

    python benchmarks/bench_runners.py [--quick] [--runs N] [--scenario NAME]
                                       [--gap SECONDS]

Four scenarios, each against a baseline measured in the same run, the
contenders interleaved (A B A B ...) so that the drift of a shared, noisy
machine hits both alike:

- `trivial`: `cyber-dojo.sh` is `true`, three small files, busybox image;
  TmpRunner against the stateless baseline (one `docker run --rm -i`, a
  gzipped tar on stdin and one on stdout, as cyber-dojo's runner does
  today). Target: median latency ratio <= 0.1.
- `built`: the C kata of examples/c-kata, built once, then run again with
  nothing changed, gcc image; KatasDataContainerRunner against the 2016
  tar-pipe (a host folder piped through `docker exec` with the CLI, kept
  from run to run). Target <= 0.2.
- `incremental`: the C kata with one `.c` changed each run (a function
  added or removed, so its object really changes);
  KatasDataContainerRunner's incremental run against its own full build
  of a fresh kata. Target <= 0.15.
- `load`: 16 threads, 200 trivial runs a round, two rounds each (one
  with `--quick`), the contenders' rounds interleaved; TmpRunner against
  the stateless baseline at the same concurrency. Targets: throughput not
  lower, median latency under load <= 0.5x, no failure, and no container
  of ours left once the runners are closed. A third contender, rounds
  interleaved too, is the engine floor: our sandbox container created,
  started (running `true`) and removed, with nothing sent or read; its
  rate bounds any runner that uses a container a run.

Our runners are called through their Python API, one object each for the
whole benchmark, as a service would keep them; the baselines run the
scripts in benchmarks/baselines/ (bash and the docker CLI), which give
their containers the same lockdown as ours. Every run's outcome is
checked (status, output, what make rebuilt): a wrong result counts as a
failure, not as a time.

Figures are medians and 90th percentiles of wall-clock latency per run,
as seen by the caller; in scenarios 1-3 every run is followed by a pause
(`--gap`) so that background work is not charged to the next run.
Targets are reported, not asserted: the exit status is 0 unless the
benchmark itself crashed.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import bench_engine  # beside this file, on sys.path when it runs
import docker
import docker.errors
from docker.models.containers import Container

from runners import KatasDataContainerRunner, TmpRunner
from runners.container import MANAGED_LABEL, PID_LABEL, ROLE_LABEL, Sandbox
from runners.images import BUSYBOX, GCC

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "baselines"
C_KATA = HERE.parent / "examples" / "c-kata"
MAX_SECONDS = 60
LOAD_CONCURRENCY = 16
LOAD_RUNS = 200
# Between load rounds: the engine finishes the last removals.
LOAD_SETTLE_SECONDS = 3.0
TRIVIAL_FILES: dict[str, bytes] = {
    "cyber-dojo.sh": b"true\n",
    "hiker.sh": b"answer() { echo 42; }\n",
    "readme.txt": b"Life, the universe and everything.\n",
}
# What examples/c-kata's program prints when every step passed.
C_PASSED = re.compile(r"^total (\d+), expected \1$", re.MULTILINE)
DESCRIPTION = "Time the runners against cyber-dojo's stateless and 2016 ways."
FLOOR = "engine floor: our container, create+start+remove"


class Outcome(NamedTuple):
    """What a contender says one run did."""

    status: int | None
    stdout: str
    stderr: str
    #: sandbox files the run created (both contenders work it out)
    created: tuple[str, ...] = ()


Run = Callable[[], Outcome]
Check = Callable[[Outcome], str]


class Options(NamedTuple):
    """How many runs each scenario makes, and the pause between runs."""

    runs: dict[str, int]
    load_runs: int
    load_rounds: int
    gap: float


@dataclass
class Tally:
    """The latencies and failures of one contender in one scenario."""

    name: str
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def p90(self) -> float:
        if len(self.seconds) < 2:
            return self.median
        return statistics.quantiles(self.seconds, n=10, method="inclusive")[8]

    def row(self) -> str:
        return (f"  {self.name:<48} {len(self.seconds):5d} "
                f"{len(self.failures):5d} {self.median * 1000:10.1f} "
                f"{self.p90 * 1000:9.1f}")


class Verdict(NamedTuple):
    scenario: str
    text: str
    passed: bool


# ---- checking what a run did ------------------------------------------


def expect_quiet_success(outcome: Outcome) -> str:
    """A trivial run: status 0 and nothing written."""
    if outcome.status != 0 or outcome.stdout or outcome.stderr:
        return f"status {outcome.status}, output {outcome.stdout[:80]!r}"
    if outcome.created:
        return f"created {list(outcome.created)[:5]}"
    return ""


def expect_c_kata(compiled: int) -> Check:
    """A C kata run that passed after compiling exactly `compiled` files."""

    def check(outcome: Outcome) -> str:
        count = sum(" -c " in line for line in outcome.stdout.splitlines())
        if outcome.status != 0 or not C_PASSED.search(outcome.stdout):
            return (f"status {outcome.status}: "
                    f"{(outcome.stdout + outcome.stderr)[-200:]!r}")
        if count != compiled:
            return f"{count} files compiled, {compiled} expected"
        return ""

    return check


def timed(tally: Tally, run: Run, check: Check) -> None:
    """Time one run into `tally`; a failed or wrong run is not a time."""
    started = time.perf_counter()
    try:
        outcome = run()
    except Exception as error:  # a failure to report, not to crash on
        tally.failures.append(f"{type(error).__name__}: {error}"[:300])
        return
    seconds = time.perf_counter() - started
    problem = check(outcome)
    if problem:
        tally.failures.append(problem)
    else:
        tally.seconds.append(seconds)


def interleaved(options: Options, scenario: str,
                *contenders: tuple[Tally, Run, Check]) -> None:
    """One untimed warm-up each, then rounds of A, B, A, B...

    `options.gap` seconds pass after every run, so that work a contender
    leaves going in the background (a pool refilling, a container being
    removed) is not charged to the next run of the other.
    """
    for tally, run, check in contenders:
        warm_up = Tally(tally.name)
        timed(warm_up, run, check)
        for failure in warm_up.failures:
            print(f"  warm-up of {tally.name} failed: {failure}")
        time.sleep(options.gap)
    for _ in range(options.runs[scenario]):
        for tally, run, check in contenders:
            timed(tally, run, check)
            time.sleep(options.gap)


# ---- the baselines ------------------------------------------------------


class BaselineError(Exception):
    """A baseline's own plumbing failed (not the kata's script)."""


def gzipped_tar(files: Mapping[str, bytes]) -> bytes:
    """The visible files as a .tgz, as cyber-dojo's runner builds it."""
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for name, content in sorted(files.items()):
            member = tarfile.TarInfo(name)
            member.size, member.mtime = len(content), now
            member.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def files_in_tgz(data: bytes) -> dict[str, bytes]:
    """Every regular file of a .tgz, by name."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            reader = tar.extractfile(member) if member.isfile() else None
            if reader is not None:
                files[member.name] = reader.read()
    return files


class StatelessBaseline:
    """`docker run --rm -i`: a .tgz in on stdin, a .tgz out on stdout."""

    def __init__(self, label: str) -> None:
        self.label = label

    def run(self, image: str, files: Mapping[str, bytes]) -> Outcome:
        name = f"bench-stateless-{secrets.token_hex(6)}"
        command = ["bash", str(BASELINES / "stateless.sh"), image, name]
        try:
            done = subprocess.run(
                command, input=gzipped_tar(files), capture_output=True,
                timeout=MAX_SECONDS, check=False, env=self._env())
        except subprocess.TimeoutExpired:
            self._remove(name)
            return Outcome(None, "", "")
        if done.returncode != 0:
            raise BaselineError(f"stateless.sh: status {done.returncode}: "
                                f"{done.stderr.decode()[-300:]}")
        return self._outcome(done.stdout, files)

    @staticmethod
    def _remove(name: str) -> None:
        # Bounded too: an engine that has hung (the 20.10 engine's
        # endpoint deadlock, moby/moby#46661, has hit this scenario here)
        # makes this run a failure rather than the benchmark a hang.
        try:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True,
                           timeout=MAX_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise BaselineError(f"docker rm -f {name}: no answer in "
                                f"{MAX_SECONDS} s; has the engine hung?"
                                ) from None

    def _outcome(self, tgz: bytes, files_in: Mapping[str, bytes]) -> Outcome:
        out = files_in_tgz(tgz)
        sandbox = {name.removeprefix("sandbox/"): content
                   for name, content in out.items()
                   if name.startswith("sandbox/")}
        # cyber-dojo's runner works out the created files, as ours does.
        created = tuple(sorted(set(sandbox) - set(files_in)))
        return Outcome(int(out["tmp/out/status"]),
                       out["tmp/out/stdout"].decode("utf-8", "replace"),
                       out["tmp/out/stderr"].decode("utf-8", "replace"),
                       created)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "BENCH_LABEL": self.label}


class TarPipe2016Baseline:
    """The 2016 runner: a host folder tar-piped through `docker exec`."""

    def __init__(self, label: str, katas: Path) -> None:
        self.label = label
        self.katas = katas

    def run(self, kata_id: str, image: str,
            files: Mapping[str, bytes]) -> Outcome:
        sandbox = self.katas / kata_id / "sandbox"
        write_changed(sandbox, files)
        with tempfile.TemporaryDirectory(dir=self.katas) as out_name:
            out = Path(out_name)
            command = ["bash", str(BASELINES / "tarpipe2016.sh"), image,
                       str(sandbox), str(out)]
            done = subprocess.run(
                command, capture_output=True, timeout=MAX_SECONDS,
                check=False, env={**os.environ, "BENCH_LABEL": self.label})
            if done.returncode != 0:
                raise BaselineError(f"tarpipe2016.sh: status "
                                    f"{done.returncode}: "
                                    f"{done.stderr.decode()[-300:]}")
            return Outcome(int((out / "status").read_text()),
                           (out / "stdout").read_text("utf-8", "replace"),
                           (out / "stderr").read_text("utf-8", "replace"))


def write_changed(sandbox: Path, files: Mapping[str, bytes]) -> None:
    """Write the visible files whose content differs from the folder's.

    What the 2016 katas folder did when the browser saved the files;
    unchanged files keep their mtimes, so make rebuilds only what changed.
    """
    sandbox.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = sandbox / name
        if path.is_file() and path.read_bytes() == content:
            continue
        path.write_bytes(content)
        path.chmod(0o755 if name.endswith(".sh") else 0o644)


# ---- our runners --------------------------------------------------------


def ours(runner: TmpRunner | KatasDataContainerRunner, kata_id: str,
         image: str, files: Mapping[str, bytes]) -> Outcome:
    result = runner.run(kata_id, image, files, max_seconds=MAX_SECONDS)
    return Outcome(result.status, result.stdout, result.stderr,
                   result.created)


class Contenders:
    """The runners and baselines, one each for the whole benchmark."""

    def __init__(self, scratch: Path) -> None:
        self.label = f"org.tarpipe.bench={os.getpid()}"
        # A service running 16 requests at once sizes its client's pool so.
        self.client = docker.from_env(max_pool_size=LOAD_CONCURRENCY * 2)
        self.volume = f"tarpipe-bench-{secrets.token_hex(4)}"
        self.tmp = TmpRunner(self.client)
        self.katas = KatasDataContainerRunner(self.volume, self.client)
        self.stateless = StatelessBaseline(self.label)
        self.tarpipe2016 = TarPipe2016Baseline(self.label, scratch)
        self.bare_options = Sandbox(self.client, BUSYBOX)._create_options()

    def close(self) -> None:
        """Close the runners; the throw-away volume goes at `clean_up`."""
        self.tmp.close()
        self.katas.close()

    def clean_up(self) -> None:
        """Remove the katas volume, its data container, stray baselines."""
        with suppress(docker.errors.NotFound):
            self.client.containers.get(f"{self.volume}-data").remove(
                force=True, v=True)
        with suppress(docker.errors.NotFound):
            self.client.volumes.get(self.volume).remove(force=True)
        for container in self.baseline_leftovers():
            with suppress(docker.errors.NotFound):
                container.remove(force=True)
        self.client.close()

    def bare_container(self) -> Outcome:
        """Create, start and remove one of our sandbox containers running
        `true`, nothing attached: the engine's part of every run."""
        bench_engine.cycle(self.client, self.bare_options)
        return Outcome(0, "", "")

    def our_leftovers(self) -> list[str]:
        """Containers this process made through a runner, but the data one."""
        labels = [f"{MANAGED_LABEL}=1", f"{PID_LABEL}={os.getpid()}"]
        found = self.client.containers.list(all=True,
                                            filters={"label": labels})
        return [c.short_id for c in found
                if c.labels.get(ROLE_LABEL) != "data"]

    def baseline_leftovers(self) -> list[Container]:
        return self.client.containers.list(
            all=True, filters={"label": self.label})


# ---- the scenarios ------------------------------------------------------


# Read when the module loads: the kata's size may change, never its form.
C_KATA_SOURCES = sorted(path.name for path in C_KATA.glob("*.c"))
C_KATA_STEPS = sorted(path.name for path in C_KATA.glob("step*.c"))


def c_kata_files() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(C_KATA.iterdir())}


def report(title: str, tallies: list[Tally]) -> None:
    print(f"\n## {title}")
    print(f"  {'contender':<48} {'runs':>5} {'fail':>5} "
          f"{'median ms':>10} {'p90 ms':>9}")
    for tally in tallies:
        print(tally.row())
        for failure in tally.failures[:3]:
            print(f"    failure: {failure}")


def ratio_verdict(scenario: str, what: str, ratio: float, target: float,
                  tallies: list[Tally]) -> Verdict:
    failed = sum(len(t.failures) for t in tallies)
    passed = ratio <= target and not failed
    text = (f"{what}: {ratio:.3f} (target <= {target:g})"
            f"{f', {failed} failures' if failed else ''}: "
            f"{'PASS' if passed else 'MISS'}")
    print(f"  {text}")
    return Verdict(scenario, text, passed)


def trivial(bench: Contenders, options: Options) -> list[Verdict]:
    files = TRIVIAL_FILES
    baseline = Tally("stateless: docker run --rm -i, tgz in and out")
    tmp = Tally("TmpRunner")
    interleaved(
        options, "trivial",
        (baseline, lambda: bench.stateless.run(BUSYBOX, files),
         expect_quiet_success),
        (tmp, lambda: ours(bench.tmp, "trivial", BUSYBOX, files),
         expect_quiet_success))
    report("1. trivial kata, busybox: TmpRunner vs stateless",
           [baseline, tmp])
    return [ratio_verdict("trivial", "median ratio TmpRunner / stateless",
                          tmp.median / baseline.median, 0.1, [baseline, tmp])]


def built(bench: Contenders, options: Options) -> list[Verdict]:
    files = c_kata_files()
    kata_id = f"built-{secrets.token_hex(4)}"
    first_builds: list[Run] = [
        lambda: ours(bench.katas, kata_id, GCC, files),
        lambda: bench.tarpipe2016.run(kata_id, GCC, files)]
    for build in first_builds:
        first = Tally("first build")
        timed(first, build, expect_c_kata(len(C_KATA_SOURCES)))
        for failure in first.failures:
            print(f"  a first build failed: {failure}")
    baseline = Tally("2016 tar-pipe: host folder, docker exec")
    katas = Tally("KatasDataContainerRunner")
    unchanged = expect_c_kata(0)
    interleaved(
        options, "built",
        (baseline, lambda: bench.tarpipe2016.run(kata_id, GCC, files),
         unchanged),
        (katas, lambda: ours(bench.katas, kata_id, GCC, files), unchanged))
    report("2. C kata built, run again unchanged, gcc: "
           "KatasDataContainerRunner vs 2016 tar-pipe", [baseline, katas])
    return [ratio_verdict("built", "median ratio katas / 2016",
                          katas.median / baseline.median, 0.2,
                          [baseline, katas])]


def toggled(files: dict[str, bytes], turn: int) -> None:
    """Add to, or take back from, one step's module a small function.

    The modules take turns, so every run changes exactly one `.c` from
    what the kata had, and its object really changes.
    """
    name = C_KATA_STEPS[turn % len(C_KATA_STEPS)]
    stem = name.removesuffix(".c")
    extra = f"\nint {stem}_extra(void) {{ return {turn}; }}\n"
    original = (C_KATA / name).read_bytes()
    files[name] = (original if files[name] != original
                   else original + extra.encode())


def incremental(bench: Contenders, options: Options) -> list[Verdict]:
    files = c_kata_files()
    kata_id = f"incr-{secrets.token_hex(4)}"
    turns = iter(range(10**6))

    def one_change() -> Outcome:
        toggled(files, next(turns))
        return ours(bench.katas, kata_id, GCC, files)

    def full_build() -> Outcome:
        fresh = f"full-{secrets.token_hex(6)}"
        return ours(bench.katas, fresh, GCC, c_kata_files())

    ours(bench.katas, kata_id, GCC, files)  # built once, untimed
    full = Tally("KatasDataContainerRunner, full build, fresh kata")
    one = Tally("KatasDataContainerRunner, one .c changed")
    interleaved(options, "incremental",
                (full, full_build, expect_c_kata(len(C_KATA_SOURCES))),
                (one, one_change, expect_c_kata(1)))
    report("3. C kata, one .c changed each run, gcc: incremental vs full "
           "build", [full, one])
    return [ratio_verdict("incremental", "median ratio incremental / full",
                          one.median / full.median, 0.15, [full, one])]


class LoadRound(NamedTuple):
    tally: Tally
    wall: float

    @property
    def throughput(self) -> float:
        """Good runs a second, over the round's wall-clock time."""
        return len(self.tally.seconds) / self.wall


def load_round(name: str, run: Callable[[int], Outcome],
               runs: int) -> LoadRound:
    """`runs` runs on LOAD_CONCURRENCY threads; per-run latency, wall time."""
    tally = Tally(name)
    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        started = time.perf_counter()
        # Each worker times its own call: latency from the start of the
        # call, not from when it was queued, for both contenders alike.
        list(pool.map(lambda i: timed(tally, lambda: run(i),
                                      expect_quiet_success), range(runs)))
        wall = time.perf_counter() - started
    return LoadRound(tally, wall)


def load(bench: Contenders, options: Options) -> list[Verdict]:
    files = TRIVIAL_FILES
    contenders: dict[str, Callable[[int], Outcome]] = {
        "stateless: docker run --rm -i, tgz in and out":
            lambda i: bench.stateless.run(BUSYBOX, files),
        "TmpRunner":
            lambda i: ours(bench.tmp, f"load{i}", BUSYBOX, files),
        FLOOR: lambda i: bench.bare_container(),
    }
    rounds: dict[str, list[LoadRound]] = {name: [] for name in contenders}
    for _ in range(options.load_rounds):
        for name, run in contenders.items():
            rounds[name].append(load_round(name, run, options.load_runs))
            time.sleep(LOAD_SETTLE_SECONDS)
    tallies = [merged(name, done) for name, done in rounds.items()]
    throughput = [statistics.median(one.throughput for one in done)
                  for done in rounds.values()]
    report(f"4. load: {LOAD_CONCURRENCY} threads, {options.load_runs} "
           f"trivial runs a round, {options.load_rounds} round(s) each: "
           "TmpRunner vs stateless", tallies)
    verdicts = load_verdicts(tallies[:2], throughput[:2])
    # What the engine allows at all: every run needs one container.
    print(f"  engine floor: {throughput[2]:.2f} containers/s with nothing "
          f"run in them; at that rate the latency ratio would be "
          f"{throughput[0] / throughput[2]:.3f}")
    return verdicts


def merged(name: str, done: list[LoadRound]) -> Tally:
    tally = Tally(name)
    for one in done:
        tally.seconds += one.tally.seconds
        tally.failures += one.tally.failures
    return tally


def load_verdicts(tallies: list[Tally],
                  throughput: list[float]) -> list[Verdict]:
    baseline, tmp = tallies
    print(f"  throughput (runs/s, median of rounds): stateless "
          f"{throughput[0]:.2f}, TmpRunner {throughput[1]:.2f}")
    gain = throughput[1] / throughput[0]
    more = Verdict("load", f"throughput ratio TmpRunner / stateless: "
                   f"{gain:.2f} (target >= 1): "
                   f"{'PASS' if gain >= 1 else 'MISS'}", gain >= 1)
    print(f"  {more.text}")
    latency = ratio_verdict("load", "median latency ratio under load",
                            tmp.median / baseline.median, 0.5, [])
    failed = sum(len(t.failures) for t in tallies)
    none_failed = Verdict("load", f"failures: {failed} (target 0): "
                          f"{'PASS' if not failed else 'MISS'}", not failed)
    print(f"  {none_failed.text}")
    return [more, latency, none_failed]


def leftovers_verdict(bench: Contenders) -> Verdict:
    """After every runner is closed: no container of ours may remain."""
    ours_left = bench.our_leftovers()
    baselines_left = [c.short_id for c in bench.baseline_leftovers()]
    passed = not ours_left
    text = (f"leaked containers of ours (label {MANAGED_LABEL}=1, this "
            f"process, not the data one): {len(ours_left)} {ours_left} "
            f"(target 0): {'PASS' if passed else 'MISS'}; "
            f"baselines' left: {len(baselines_left)}")
    print(f"\n## after closing the runners\n  {text}")
    return Verdict("load", text, passed)


# ---- the command line -------------------------------------------------

SCENARIOS: dict[str, Callable[[Contenders, Options], list[Verdict]]] = {
    "trivial": trivial,
    "built": built,
    "incremental": incremental,
    "load": load,
}
DEFAULT_RUNS = {"trivial": 30, "built": 15, "incremental": 8}
QUICK_RUNS = {"trivial": 5, "built": 3, "incremental": 2}


def parse_options(argv: list[str]) -> tuple[list[str], Options]:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true",
                        help="few repetitions: a smoke run")
    parser.add_argument("--runs", type=int, metavar="N",
                        help="timed runs per contender in scenarios 1-3")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS),
                        help="run this scenario only")
    parser.add_argument("--gap", type=float, default=0.5, metavar="SECONDS",
                        help="pause after each run in scenarios 1-3 "
                        "(default 0.5)")
    args = parser.parse_args(argv)
    if args.gap < 0:
        parser.error("--gap must not be negative")
    runs = dict(QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if args.runs is not None:
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        runs = dict.fromkeys(runs, args.runs)
    names = [args.scenario] if args.scenario else list(SCENARIOS)
    load_runs, load_rounds = (48, 1) if args.quick else (LOAD_RUNS, 2)
    return names, Options(runs, load_runs, load_rounds, args.gap)


def print_header(argv: list[str], client: docker.DockerClient,
                 options: Options) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"$ {shlex.join(['python', 'benchmarks/bench_runners.py', *argv])}")
    print(f"# {now}; Docker {client.version()['Version']}; "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}; "
          f"load average {_load()}")
    print("# latency per run as seen by the caller; medians and p90 over "
          f"interleaved runs; {options.gap:g} s pause after each run")


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def print_summary(verdicts: list[Verdict], started: float) -> None:
    print(f"\n## summary ({time.monotonic() - started:.0f} s, "
          f"load average now {_load()})")
    for verdict in verdicts:
        print(f"  {verdict.scenario:<12} {verdict.text}")


def main(argv: list[str]) -> int:
    names, options = parse_options(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-katas-") as scratch:
        bench = Contenders(Path(scratch))
        try:
            print_header(argv, bench.client, options)
            try:
                verdicts = [verdict for name in names
                            for verdict in SCENARIOS[name](bench, options)]
            finally:
                bench.close()
            if "load" in names:
                verdicts.append(leftovers_verdict(bench))
        finally:
            bench.clean_up()
    print_summary(verdicts, started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
