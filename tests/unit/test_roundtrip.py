"""pack_dir then unpack_into gives back the same tree, to the nanosecond."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tarpipe.pack import pack_dir
from tarpipe.unpack import unpack_into

NS = 1_000_000_000
# What ext4 stores exactly: back to 1901 (it clamps the very first second
# of its range to whole seconds); 2**33 s (2242) is well inside its end.
MTIMES = st.integers(min_value=-(2**31 - 1) * NS, max_value=2**33 * NS)


@dataclass(frozen=True)
class Entry:
    """A file (`content` is bytes) or a directory (`content` is None)."""

    content: bytes | None
    mode: int
    mtime_ns: int


Tree = dict[tuple[str, ...], Entry]


def _usable(name: str) -> bool:
    return name not in {".", ".."} and len(os.fsencode(name)) <= 255


TEXT_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/\0"),
                     min_size=1, max_size=12)
# Names that are not UTF-8 come back from os.fsdecode with surrogates.
BYTE_NAMES = st.binary(min_size=1, max_size=8).map(os.fsdecode)
NAMES = st.one_of(TEXT_NAMES, BYTE_NAMES).filter(
    lambda name: "/" not in name and "\0" not in name and _usable(name))


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    """Random nested files and (some empty) directories."""
    paths = draw(st.lists(st.lists(NAMES, min_size=1, max_size=4)
                          .map(tuple), max_size=12, unique=True))
    parents = {path[:i] for path in paths for i in range(1, len(path))}
    tree: Tree = {}
    for path in sorted(set(paths) | parents):
        is_dir = path in parents or draw(st.booleans())
        mode = draw(st.integers(0, 0o777))
        tree[path] = Entry(
            None if is_dir else draw(st.binary(max_size=3000)),
            mode | 0o700 if is_dir else mode | 0o400,
            draw(MTIMES))
    return tree


def build(root: Path, tree: Tree) -> None:
    for path, entry in tree.items():
        if entry.content is not None:
            target = root.joinpath(*path)
            target.write_bytes(entry.content)
            target.chmod(entry.mode)
            os.utime(target, ns=(0, entry.mtime_ns))
        else:
            root.joinpath(*path).mkdir()
    # Deepest first, so setting a directory does not move its parent.
    for path, entry in sorted(tree.items(), key=lambda i: -len(i[0])):
        if entry.content is None:
            root.joinpath(*path).chmod(entry.mode)
            os.utime(root.joinpath(*path), ns=(0, entry.mtime_ns))


def read_back(root: Path) -> Tree:
    found: Tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            assert stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)
            content = None if stat.S_ISDIR(info.st_mode) else path.read_bytes()
            key = path.relative_to(root).parts
            found[key] = Entry(content, stat.S_IMODE(info.st_mode),
                               info.st_mtime_ns)
    return found


@settings(max_examples=100, deadline=None)
@given(trees())
def test_a_tree_survives_pack_and_unpack(tree: Tree) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch, "source"), Path(scratch, "target")
        source.mkdir()
        target.mkdir()
        build(source, tree)
        assert read_back(source) == tree  # the input is what we meant

        unpack_into(pack_dir(source), target)
        assert read_back(target) == tree
