"""The git history of a kata, written and read with dulwich."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runners.history import (
    BRANCH,
    HostHistory,
    build_commit,
    history_from_files,
    loose_object_files,
)

RUNS = [
    {"cyber-dojo.sh": b"make\n", "hiker.c": b"int answer;\n"},
    {"cyber-dojo.sh": b"make\n", "hiker.c": b"int answer = 42;\n"},
    {"cyber-dojo.sh": b"make test\n", "src/deep/util.c": b"\n"},
]


def test_each_run_is_one_commit_holding_exactly_its_visible_files(
    tmp_path: Path,
) -> None:
    history = HostHistory(tmp_path / "kata.git")
    for number, files in enumerate(RUNS, start=1):
        history.commit(files, f"run {number}", commit_time=1000 + number,
                       executable=["cyber-dojo.sh"])

    entries = history.entries()
    assert [e.message for e in entries] == ["run 1", "run 2", "run 3"]
    assert [dict(e.files) for e in entries] == RUNS
    assert [e.commit_time for e in entries] == [1001, 1002, 1003]


@pytest.mark.skipif(shutil.which("git") is None, reason="no git to cross-check")
def test_git_itself_reads_the_history(tmp_path: Path) -> None:
    history = HostHistory(tmp_path / "kata.git")
    for files in RUNS:
        history.commit(files, "run", commit_time=1, executable=["cyber-dojo.sh"])
    git = ["git", "--git-dir", str(tmp_path / "kata.git")]

    subprocess.run([*git, "fsck", "--strict"], check=True, capture_output=True)
    log = subprocess.run([*git, "log", "--format=%s"], check=True,
                         capture_output=True, text=True).stdout
    listing = subprocess.run([*git, "ls-tree", "-r", "main~2"], check=True,
                             capture_output=True, text=True).stdout
    assert log.splitlines() == ["run", "run", "run"]
    assert "100755 blob" in listing.splitlines()[0]


def test_same_files_parent_message_and_time_give_the_same_commit() -> None:
    first = build_commit(RUNS[0], parent=None, message="m", commit_time=7)
    again = build_commit(dict(reversed(RUNS[0].items())), parent=None,
                         message="m", commit_time=7)
    later = build_commit(RUNS[0], parent=None, message="m", commit_time=8)
    assert first[1] == again[1]
    assert first[1] != later[1]


def test_loose_object_files_read_back_as_the_same_history() -> None:
    files: dict[str, bytes] = {}
    parent = None
    for number, visible in enumerate(RUNS):
        objects, parent = build_commit(visible, parent=parent,
                                       message=f"run {number}", commit_time=1)
        files.update(loose_object_files(objects))
    assert parent is not None
    files[BRANCH.decode()] = parent + b"\n"

    entries = history_from_files(files)
    assert [dict(e.files) for e in entries] == RUNS
    assert entries[-1].commit_id == parent.decode()


def test_no_history_before_the_first_run(tmp_path: Path) -> None:
    assert HostHistory(tmp_path / "new.git").entries() == []
    assert history_from_files({}) == []
