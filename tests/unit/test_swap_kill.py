"""SIGKILL at random moments of unpack_into(replace=True).

A child process swaps a destination between two trees as fast as it can;
the parent kills it at random moments.  After every kill the destination
must be exactly one of the two trees (paths, bytes, modes, ns mtimes), and
after the next call no staging directory may be left.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from tarpipe.unpack import unpack_into
from tests.unit.test_hostile import snapshot
from tests.unit.test_unpack import directory, entry, tar_bytes

ROUNDS = 60
SEED = 20240601


def make_tree(rng: random.Random, files: int, tag: str) -> bytes:
    """A sandbox of small files in a few directories, and one big file."""
    members = [directory(f"{tag}{index}", mode=rng.choice([0o755, 0o700]),
                         mtime_ns=rng.randrange(10**18)) for index in range(4)]
    for index in range(files):
        members.append(entry(
            f"{tag}{index % 4}/f{index}.c", rng.randbytes(rng.randrange(4096)),
            mode=rng.choice([0o644, 0o600, 0o755]),
            mtime_ns=rng.randrange(-10**18, 10**19)))
    members.append(entry("shared.o", rng.randbytes(300_000),
                         mtime_ns=rng.randrange(10**19)))
    return tar_bytes(*members)


def tree_of(path: Path) -> dict[str, tuple[object, ...]]:
    found = snapshot(path)
    del found["."]  # the top itself is new after every swap
    return found


def leftovers(parent: Path) -> list[str]:
    return [name for name in os.listdir(parent)
            if name.startswith(".dest.tarpipe-")]


def swap_forever(dest: Path, trees: list[bytes]) -> None:
    """The child: replace `dest` by each tree in turn until killed."""
    while True:
        for data in trees:
            unpack_into([data], dest, replace=True)


def kill_at_random(dest: Path, trees: list[bytes], delay: float) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            swap_forever(dest, trees)
        finally:
            os._exit(1)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_a_killed_replace_leaves_old_or_new_and_no_leftovers(
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    trees = [make_tree(rng, 40, "a"), make_tree(rng, 30, "b")]
    expected = []
    for index, data in enumerate(trees):
        unpack_into([data], tmp_path / f"reference{index}")
        expected.append(tree_of(tmp_path / f"reference{index}"))
    assert expected[0] != expected[1]
    dest = tmp_path / "dest"
    unpack_into([trees[0]], dest, replace=True)
    seen = [0, 0]
    interrupted = 0

    started = time.monotonic()
    for _ in range(ROUNDS):
        kill_at_random(dest, trees, rng.uniform(0.001, 0.03))
        now = tree_of(dest)
        assert now in expected
        seen[expected.index(now)] += 1
        interrupted += bool(leftovers(tmp_path))

        pick = rng.randrange(2)
        unpack_into([trees[pick]], dest, replace=True)
        assert leftovers(tmp_path) == []
        assert tree_of(dest) == expected[pick]
    elapsed = time.monotonic() - started

    # The kills must have landed inside calls, and on both trees, for the
    # test to have shown anything.
    assert interrupted >= ROUNDS // 3
    assert min(seen) >= ROUNDS // 10
    assert elapsed < 30
