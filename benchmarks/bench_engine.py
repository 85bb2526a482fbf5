"""How fast the engine creates, starts and removes our sandbox containers.

    python benchmarks/bench_engine.py [--containers N] [--threads N]
                                      [--rounds N]

Each round creates, starts and force-removes N busybox containers
(`true`) on a pool of threads, once with the runners' own options
(networking disabled: no endpoint at all) and once with the same options
on the engine's `none` network instead, the two interleaved. It prints
containers a second for each, their medians over the rounds, and the
ratio. Under load the runners are bound by this rate: every run uses a
container once. The `none` network half can hit the 20.10 engine's
endpoint deadlock (moby/moby#46661); `bash .ci/setup` restarts a hung
engine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker

from runners.container import MANAGED_LABEL, ROLE_LABEL, Sandbox
from runners.images import BUSYBOX

ROLE = "bench-engine"


def options(client: docker.DockerClient, *, disabled: bool) -> dict[str, Any]:
    """The runners' create options, networking disabled or on `none`."""
    made = Sandbox(client, BUSYBOX)._create_options()
    made["labels"] = {MANAGED_LABEL: "1", ROLE_LABEL: ROLE}
    made["network_disabled"] = disabled
    return made


def cycle(client: docker.DockerClient, made: dict[str, Any]) -> None:
    container = client.containers.create(BUSYBOX, ["true"], **made)
    try:
        container.start()
    finally:
        client.api.remove_container(str(container.id), force=True)


def rate(client: docker.DockerClient, made: dict[str, Any],
         containers: int, threads: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: cycle(client, made), range(containers)))
    return containers / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=96)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    client = docker.from_env(max_pool_size=args.threads * 2)
    kinds = {"networking disabled (ours)": options(client, disabled=True),
             "on the none network": options(client, disabled=False)}
    rates: dict[str, list[float]] = {name: [] for name in kinds}
    for round_number in range(1, args.rounds + 1):
        for name, made in kinds.items():
            rates[name].append(rate(client, made, args.containers,
                                    args.threads))
            print(f"round {round_number}: {name}: "
                  f"{rates[name][-1]:.1f} containers/s", flush=True)
    medians = {name: statistics.median(found) for name, found in rates.items()}
    for name, median in medians.items():
        print(f"median, {name}: {median:.1f} containers/s")
    ours, none = medians.values()
    print(f"ratio ours / none network: {ours / none:.2f}")
    left = client.containers.list(
        all=True, filters={"label": f"{ROLE_LABEL}={ROLE}"})
    for container in left:
        container.remove(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
