"""The git history of a kata: one commit of its visible files per run.

Commits are built in memory with dulwich (no git command) and stored in a
bare repository.  Where the repository lives decides how objects reach it:

- on the host (`HostHistory`): through dulwich's own object store and refs,
  which write loose objects and move the ref with a lock file and a rename;
- in a Docker volume: as loose-object files in a tar stream
  (`loose_object_files`), the ref moved by a rename inside the container,
  and read back from such files (`history_from_files`).

Only visible files are committed, never build products: the sandbox holds
those once, the history holds what the person wrote.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dulwich.object_store import BaseObjectStore, MemoryObjectStore
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.refs import Ref
from dulwich.repo import Repo

__all__ = [
    "BRANCH",
    "HistoryEntry",
    "HostHistory",
    "build_commit",
    "history_from_files",
    "loose_object_files",
]

BRANCH = Ref(b"refs/heads/main")
AUTHOR = b"tarpipe runner <runner@tarpipe.invalid>"

# A directory of the tree being built: names to sub-directories or to
# (git mode, blob id) of files.
_Node = dict[str, "_Node | tuple[int, ObjectID]"]
FILE_MODE = 0o100644
EXECUTABLE_MODE = 0o100755


@dataclass(frozen=True)
class HistoryEntry:
    """One run of a kata as its history keeps it."""

    commit_id: str
    message: str
    commit_time: int
    files: Mapping[str, bytes] = field(repr=False)


def build_commit(
    files: Mapping[str, bytes],
    *,
    parent: ObjectID | None,
    message: str,
    commit_time: int,
    executable: Iterable[str] = (),
) -> tuple[list[ShaFile], ObjectID]:
    """Blobs, trees and the commit of `files`, and the commit's id.

    `commit_time` is whole seconds since the epoch: a parameter, so the
    same files, parent, message and time always give the same id.
    """
    executable = set(executable)
    objects: list[ShaFile] = []
    root: _Node = {}
    for path in sorted(files):
        *parents, name = path.split("/")
        node = root
        for part in parents:
            child = node.setdefault(part, {})
            assert isinstance(child, dict), f"{path!r} is below a file"
            node = child
        blob = Blob.from_string(files[path])
        objects.append(blob)
        mode = EXECUTABLE_MODE if path in executable else FILE_MODE
        node[name] = (mode, blob.id)
    tree_id = _add_tree(root, objects)

    commit = Commit()
    commit.tree = tree_id
    commit.parents = [parent] if parent else []
    commit.author = commit.committer = AUTHOR
    commit.author_time = commit.commit_time = commit_time
    commit.author_timezone = commit.commit_timezone = 0
    commit.encoding = b"UTF-8"
    commit.message = message.encode("utf-8")
    objects.append(commit)
    return objects, commit.id


def _add_tree(node: _Node, objects: list[ShaFile]) -> ObjectID:
    tree = Tree()
    for name, entry in node.items():
        if isinstance(entry, dict):
            tree.add(os.fsencode(name), 0o040000, _add_tree(entry, objects))
        else:
            mode, blob_id = entry
            tree.add(os.fsencode(name), mode, blob_id)
    objects.append(tree)
    return tree.id


def walk(
    store: BaseObjectStore, head: ObjectID | None, limit: int | None = None
) -> list[HistoryEntry]:
    """The commits reachable from `head` by first parents, oldest first.

    With `limit`, only that many of the newest.
    """
    entries: list[HistoryEntry] = []
    while head is not None and (limit is None or len(entries) < limit):
        commit = store[head]
        assert isinstance(commit, Commit)
        entries.append(HistoryEntry(
            commit_id=commit.id.decode("ascii"),
            message=commit.message.decode("utf-8", "replace"),
            commit_time=commit.commit_time,
            files=dict(_tree_files(store, commit.tree, "")),
        ))
        head = commit.parents[0] if commit.parents else None
    entries.reverse()
    return entries


def _tree_files(
    store: BaseObjectStore, tree_id: ObjectID, prefix: str
) -> Iterator[tuple[str, bytes]]:
    tree = store[tree_id]
    assert isinstance(tree, Tree)
    for item in tree.iteritems():
        path = prefix + os.fsdecode(item.path)
        if item.mode == 0o040000:
            yield from _tree_files(store, item.sha, path + "/")
        else:
            blob = store[item.sha]
            assert isinstance(blob, Blob)
            yield path, blob.as_raw_string()


class HostHistory:
    """A kata's bare repository in a directory of the host.

    The repository is opened for each operation and closed after it, so
    an instance holds no file handles between runs.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / "HEAD").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            with Repo.init_bare(str(self.path)) as repo:
                repo.refs.set_symbolic_ref(Ref(b"HEAD"), BRANCH)

    def head(self) -> ObjectID | None:
        """The id of the newest commit, or None before the first."""
        with Repo(str(self.path), bare=True) as repo:
            return _head(repo)

    def commit(
        self,
        files: Mapping[str, bytes],
        message: str,
        *,
        commit_time: int,
        executable: Iterable[str] = (),
    ) -> str:
        """Add one commit of `files` on top of the branch; its id."""
        with Repo(str(self.path), bare=True) as repo:
            parent = _head(repo)
            objects, commit_id = build_commit(
                files, parent=parent, message=message,
                commit_time=commit_time, executable=executable)
            for obj in objects:
                repo.object_store.add_object(obj)
            if not repo.refs.set_if_equals(BRANCH, parent, commit_id):
                raise RuntimeError(
                    f"history in {str(self.path)!r} moved during a commit")
        return commit_id.decode("ascii")

    def entries(self) -> list[HistoryEntry]:
        """Every commit, oldest first."""
        with Repo(str(self.path), bare=True) as repo:
            return walk(repo.object_store, _head(repo))

    def latest(self) -> HistoryEntry | None:
        """The newest commit, None before the first."""
        with Repo(str(self.path), bare=True) as repo:
            newest = walk(repo.object_store, _head(repo), limit=1)
        return newest[0] if newest else None


def _head(repo: Repo) -> ObjectID | None:
    try:
        return repo.refs[BRANCH]
    except KeyError:
        return None


def loose_object_files(objects: Iterable[ShaFile]) -> dict[str, bytes]:
    """`objects/xx/yyyy...` paths of a bare repository and their bytes."""
    files = {}
    for obj in objects:
        hexsha = obj.id.decode("ascii")
        path = f"objects/{hexsha[:2]}/{hexsha[2:]}"
        files[path] = b"".join(obj.as_legacy_object_chunks())
    return files


def history_from_files(files: Mapping[str, bytes]) -> list[HistoryEntry]:
    """The history in a bare repository's files, read into memory.

    Only loose objects and the branch's ref file are looked at: that is
    all `loose_object_files` and a ref update ever write.
    """
    store = MemoryObjectStore()
    for path, data in files.items():
        if path.startswith("objects/") and path.count("/") == 2:
            store.add_object(ShaFile.from_file(io.BytesIO(data)))
    ref = files.get(BRANCH.decode("ascii"), b"").strip()
    return walk(store, ObjectID(ref) if ref else None)
