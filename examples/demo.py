"""The main job: a real C kata through the katas-data-container runner.

Run 1 builds all 41 objects; run 2, after one .c changes, rebuilds just
that one: the object files, kept in the kata's Docker volume and piped
through a fresh container each time with nanosecond mtimes, are still
up to date for make.  Prints both runs' output and timings, and the
kata's history.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from pathlib import Path

from runners import KatasDataContainerRunner, RunResult
from runners.images import GCC

KATA = Path(__file__).parent / "c-kata"


def show(title: str, result: RunResult, wall: float) -> None:
    print(f"--- {title}: status {result.status}, "
          f"{'timed out, ' if result.timed_out else ''}"
          f"{result.duration:.2f} s in the container, {wall:.2f} s in all")
    print(result.stdout.rstrip())
    if result.stderr:
        print(result.stderr.rstrip(), file=sys.stderr)
    print(f"    created {len(result.created)}, changed "
          f"{list(result.changed)}, deleted {list(result.deleted)}")


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    files = {p.name: p.read_bytes() for p in sorted(KATA.iterdir())}
    kata_id = f"demo-{secrets.token_hex(4)}"
    with KatasDataContainerRunner("tarpipe-demo-katas") as runner:
        started = time.monotonic()
        full = runner.run(kata_id, GCC, files)
        show("run 1, full build", full, time.monotonic() - started)
        files["step07.c"] += b"\nint extra(void) { return 7; }\n"
        started = time.monotonic()
        incremental = runner.run(kata_id, GCC, files)
        show("run 2, step07.c changed", incremental,
             time.monotonic() - started)
        print("--- history of", kata_id)
        for entry in runner.history(kata_id):
            print(f"    {entry.commit_id[:12]} {entry.message.splitlines()[0]}")
    return 0 if full.status == incremental.status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
