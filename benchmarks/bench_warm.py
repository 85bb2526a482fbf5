"""Time a trivial run through a warm container taken from a pool.

    python benchmarks/bench_warm.py [--runs N] [--image IMAGE] [--gap S]

`cyber-dojo.sh` is `true`, among three small files. One run is
`pool.take(image)`, `run(...)`, and reading the sandbox back through
`tarpipe.retar` (with a record), timed from the take to the last chunk.
Before each run the pool's stock is full again and `--gap` seconds have
passed, so each run meets a warm pool, as a service between two
presses of [test] would. Prints the median and p90 of the whole, and the
median of each step. Target: median under 50 ms; the exit status is 1
when it is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import docker

from runners.images import GCC
from runners.warm import ContainerPool
from tarpipe import NOBODY, pack_files, retar
from tarpipe.filediff import FileState

TARGET_SECONDS = 0.050
FILES = {
    "cyber-dojo.sh": b"true\n",
    "hiker.c": b"int answer(void) { return 6 * 9; }\n",
    "hiker.h": b"int answer(void);\n",
}


@dataclass(frozen=True)
class Timing:
    take: float
    run: float
    files: float

    @property
    def total(self) -> float:
        return self.take + self.run + self.files


def one_run(pool: ContainerPool, image: str) -> Timing:
    started = time.perf_counter()
    container = pool.take(image)
    taken = time.perf_counter()
    try:
        stream = pack_files(FILES, mtime_ns=time.time_ns(), owner=NOBODY)
        run = container.run(stream, max_seconds=10)
        ran = time.perf_counter()
        record: dict[str, FileState] = {}
        for _ in retar(run.files, owner=NOBODY, record=record):
            pass
        done = time.perf_counter()
    finally:
        pool.give_back(container)
    if run.result.status != 0 or sorted(record) != sorted(FILES):
        raise SystemExit(f"a run went wrong: {run.result}, {sorted(record)}")
    return Timing(taken - started, ran - taken, done - ran)


def wait_until_warm(pool: ContainerPool, image: str, gap: float) -> None:
    while pool.stock(image) < pool.size:
        time.sleep(0.01)
    time.sleep(gap)


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:6.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--image", default=GCC)
    parser.add_argument("--gap", type=float, default=0.3,
                        help="seconds between a full stock and a run")
    args = parser.parse_args()

    client = docker.from_env()
    timings = []
    with ContainerPool(client, size=2) as pool:
        one_run(pool, args.image)  # starts the stock; not counted
        for _ in range(args.runs):
            wait_until_warm(pool, args.image, args.gap)
            timings.append(one_run(pool, args.image))
    client.close()

    totals = [timing.total for timing in timings]
    median = statistics.median(totals)
    p90 = statistics.quantiles(totals, n=10)[-1]
    print(f"{args.runs} runs of a trivial cyber-dojo.sh in {args.image}, "
          "warm pool:")
    print(f"  take + run + files  median {milliseconds(median)}   "
          f"p90 {milliseconds(p90)}")
    for step in ("take", "run", "files"):
        values = [getattr(timing, step) for timing in timings]
        median_step = statistics.median(values)
        print(f"  {step:<18}  median {milliseconds(median_step)}")
    print(f"  target: median under {milliseconds(TARGET_SECONDS).strip()}")
    return 0 if median < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
