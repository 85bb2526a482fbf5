"""How fast the engine creates, starts and removes our sandbox containers.

    python benchmarks/bench_engine.py [--containers N] [--threads N]
                                      [--rounds N]

Each round creates, starts and force-removes N busybox containers
(`true`) on a pool of threads, three ways, interleaved: with the
runners' own options (networking disabled, our seccomp profile); the
same with the engine's default seccomp profile instead; and the same on
the engine's `none` network instead. It prints containers a second for
each, their medians over the rounds, and the ratios of ours to the
others. Under load the runners are bound by this rate: every run uses a
container once. The `none` network variant can hit the 20.10 engine's
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

from runners.container import (
    MANAGED_LABEL,
    ROLE_LABEL,
    ContainerLimits,
    Sandbox,
    create_container,
)
from runners.images import BUSYBOX

ROLE = "bench-engine"


def options(client: docker.DockerClient, limits: ContainerLimits, *,
            disabled: bool) -> dict[str, Any]:
    """The runners' create options, networking disabled or on `none`."""
    made = Sandbox(client, BUSYBOX, limits=limits)._create_options()
    made["labels"] = {MANAGED_LABEL: "1", ROLE_LABEL: ROLE}
    made["network_disabled"] = disabled
    return made


def cycle(client: docker.DockerClient, made: dict[str, Any]) -> None:
    container = create_container(client, BUSYBOX, ["true"], made)
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
    ours, engine = ContainerLimits(), ContainerLimits(syscalls="engine")
    kinds = {
        "ours": options(client, ours, disabled=True),
        "engine's default seccomp profile": options(client, engine,
                                                    disabled=True),
        "on the none network": options(client, ours, disabled=False),
    }
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
    for name, median in list(medians.items())[1:]:
        print(f"ratio ours / {name}: {medians['ours'] / median:.2f}")
    left = client.containers.list(
        all=True, filters={"label": f"{ROLE_LABEL}={ROLE}"})
    for container in left:
        container.remove(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
