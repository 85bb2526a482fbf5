"""Time tarpipe's pack_dir + unpack_into against a GNU tar pipe.

    python benchmarks/bench_pack_unpack.py [--repeat N] [--big]

The default run builds a 2.8 MB sandbox of 200 files (seeded pseudo-random
bytes, nested directories, the size of a typical kata with build products)
and times, N times each, interleaved, copying it to a fresh directory
with tarpipe (in this process) and with `tar -cf - -C src . | tar -xf -
-C dst` (two tar processes joined by a pipe, no shell), and for
reference the same with `--format=posix`, which keeps nanosecond mtimes
as tarpipe does.  It prints the medians and the ratio of the first two;
the target is at most 2x.  It also prints the median time `retar` takes
to check and re-write the sandbox's stream, fed in 64 KiB chunks as
from a container (no target: the runners do it twice a run).

`--big` instead packs and unpacks one 1 GiB file (sparse on disk, written
out in full) and prints how far the peak resident memory of this process
grew; the target is under 64 MiB, i.e. flat whatever the file's size.

The exit status is 1 when the run misses its target.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tarpipe.limits import GiB, Limits, MiB
from tarpipe.owner import NOBODY
from tarpipe.pack import pack_dir
from tarpipe.retar import retar
from tarpipe.unpack import unpack_into

SANDBOX_BYTES = 2_800_000
STREAM_CHUNK = 64 * 1024
SANDBOX_FILES = 200
RATIO_TARGET = 2.0
GROWTH_TARGET = 64 * MiB
DESCRIPTION = "Time tarpipe pack + unpack against a GNU tar pipe."


def build_sandbox(root: Path, seed: int = 2016) -> None:
    """Files of skewed sizes spread over nested directories."""
    rng = random.Random(seed)
    folders = [Path(".")]
    for i in range(12):
        folders.append(rng.choice(folders) / f"dir{i:02d}")
    weights = [rng.paretovariate(1.2) for _ in range(SANDBOX_FILES)]
    sizes = [int(SANDBOX_BYTES * w / sum(weights)) for w in weights]
    sizes[0] += SANDBOX_BYTES - sum(sizes)
    for i, size in enumerate(sizes):
        path = root / rng.choice(folders) / f"file{i:03d}.{rng.choice('cho')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))


def copy_with_tarpipe(source: Path, target: Path) -> None:
    unpack_into(pack_dir(source), target)


def copy_with_gnu_tar(source: Path, target: Path,
                      *options: str) -> None:
    packer = subprocess.Popen(
        ["tar", "-cf", "-", *options, "-C", str(source), "."],
        stdout=subprocess.PIPE)
    assert packer.stdout is not None
    unpacker = subprocess.run(["tar", "-xf", "-", "-C", str(target)],
                              stdin=packer.stdout, check=False)
    packer.stdout.close()
    if packer.wait() or unpacker.returncode:
        raise RuntimeError("the GNU tar pipe failed")


def copy_with_gnu_tar_posix(source: Path, target: Path) -> None:
    copy_with_gnu_tar(source, target, "--format=posix")


Copy = Callable[[Path, Path], None]
# The first is ours; the second the baseline of the target ratio.  The
# third keeps nanosecond mtimes as tarpipe does, by writing PAX headers.
COPIES: dict[str, Copy] = {
    "tarpipe pack_dir + unpack_into": copy_with_tarpipe,
    "tar -cf - -C src . | tar -xf - -C dst": copy_with_gnu_tar,
    "the same with tar -c --format=posix": copy_with_gnu_tar_posix,
}


def timed(copy: Copy, source: Path, scratch: Path) -> float:
    """Seconds to copy `source` into a fresh, empty directory."""
    target = Path(tempfile.mkdtemp(dir=scratch))
    try:
        start = time.perf_counter()
        copy(source, target)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(target)


def tree_state(root: Path, exact: bool) -> dict[str, tuple[bytes, int]]:
    """Names and bytes, and with `exact` modes and nanosecond mtimes."""
    return {
        str(path.relative_to(root)): (
            b"" if path.is_dir() else path.read_bytes(),
            hash((path.stat().st_mode & 0o777, path.stat().st_mtime_ns))
            if exact else 0)
        for path in root.rglob("*")}


def check_copies(source: Path, scratch: Path) -> None:
    """Make sure every contender really copies (GNU tar's default format
    keeps whole seconds only)."""
    for copy in COPIES.values():
        exact = copy is not copy_with_gnu_tar
        target = Path(tempfile.mkdtemp(dir=scratch))
        copy(source, target)
        if tree_state(target, exact) != tree_state(source, exact):
            raise RuntimeError(f"{copy.__name__} did not copy exactly")
        shutil.rmtree(target)


def time_retar(source: Path, repeat: int) -> float:
    """Median seconds for `retar` of the tree's stream, with a record."""
    data = b"".join(pack_dir(source))
    chunks = [data[i:i + STREAM_CHUNK]
              for i in range(0, len(data), STREAM_CHUNK)]
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in retar(iter(chunks), owner=NOBODY, record={}):
            pass
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def compare(repeat: int) -> bool:
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        source = scratch / "sandbox"
        source.mkdir()
        build_sandbox(source)
        check_copies(source, scratch)

        times: dict[str, list[float]] = {name: [] for name in COPIES}
        for _ in range(repeat):
            for name, copy in COPIES.items():
                times[name].append(timed(copy, source, scratch))
        retar_seconds = time_retar(source, repeat)

    medians = [statistics.median(seconds) for seconds in times.values()]
    print(f"sandbox: {SANDBOX_FILES} files, {SANDBOX_BYTES:,} bytes; "
          f"median of {repeat} copies each")
    for name, seconds in zip(times, medians, strict=True):
        print(f"{name:<40} {seconds * 1000:7.1f} ms")
    print(f"{'tarpipe retar of its stream (no disk)':<40} "
          f"{retar_seconds * 1000:7.1f} ms")
    ratio = medians[0] / medians[1]
    print(f"ratio: {ratio:.2f}x (target <= {RATIO_TARGET:g}x)")
    return ratio <= RATIO_TARGET


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def big_file(size: int = 1 * GiB) -> bool:
    limits = Limits(max_file_bytes=2 * GiB, max_total_bytes=2 * GiB)
    with tempfile.TemporaryDirectory() as scratch_name:
        source = Path(scratch_name) / "source"
        target = Path(scratch_name) / "target"
        source.mkdir()
        target.mkdir()
        with open(source / "big.bin", "wb") as big:
            big.truncate(size)  # sparse: no disk space, no time

        before = peak_rss()
        start = time.perf_counter()
        unpack_into(pack_dir(source), target, limits=limits)
        seconds = time.perf_counter() - start
        growth = peak_rss() - before
        copied = (target / "big.bin").stat().st_size

    print(f"packed and unpacked a {copied / GiB:g} GiB file "
          f"in {seconds:.1f} s ({copied / MiB / seconds:.0f} MiB/s)")
    print(f"peak memory grew by {growth / MiB:.1f} MiB, to "
          f"{(before + growth) / MiB:.1f} MiB "
          f"(target: growth < {GROWTH_TARGET // MiB} MiB)")
    return copied == size and growth < GROWTH_TARGET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--repeat", type=int, default=15, metavar="N")
    parser.add_argument("--big", action="store_true",
                        help="measure memory while copying a 1 GiB file")
    args = parser.parse_args(argv)
    met = big_file() if args.big else compare(args.repeat)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
