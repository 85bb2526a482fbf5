"""The katas-data-container runner: atomic runs, no host folder at all.

The katas live in a named Docker volume, mounted at /katas in a data
container that this runner creates on first use and keeps (it has no
network, like every container here).  One folder a kata::

    /katas/KATA_ID/sandbox -> s.TOKEN   the sandbox, behind a symlink
    /katas/KATA_ID/s.TOKEN/             the files of the last good run
    /katas/KATA_ID/git/                 bare repository, visible files
    /katas/KATA_ID/visible.json         head commit, visible files' digests

A run: the visible files that changed are written into the sandbox (the
only change a timed-out run leaves); *all* sandbox files are tar-piped
from the data container into a fresh run container, mtimes exact to the
nanosecond and re-owned to `nobody`; `cyber-dojo.sh` runs; if it finished
within its limit, all files are tar-piped back, re-owned to the outside
owner, into a new `s.TOKEN` beside the old one, and the symlink is
flipped by one rename.  Until that rename the kata is exactly as before;
after it, exactly as the run left it.  A run that timed out brings
nothing back: as if the attempt was never made.

Runs of one kata are serialized within this process; two processes
sharing one volume must not run the same kata at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shlex
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast

import docker
import docker.errors
from docker.models.containers import Container
from dulwich.objects import ObjectID

from tarpipe import NOBODY, Limits, Owner, pack_files, retar
from tarpipe.errors import TarPipeError
from tarpipe.filediff import FileDiff, FileState, diff
from tarpipe.memory import unpack_files

from ._base import (
    KATA_ID_PATTERN,
    RUN_COMMAND,
    Clock,
    KataLocks,
    RunResult,
    check_kata_id,
    check_request,
    run_message,
)
from .container import (
    MANAGED_LABEL,
    ROLE_LABEL,
    ContainerLimits,
    Sandbox,
    exec_in,
    exec_out,
)
from .errors import ContainerError
from .history import (
    BRANCH,
    HistoryEntry,
    build_commit,
    history_from_files,
    loose_object_files,
)
from .images import GCC, require_image

__all__ = ["KatasDataContainerRunner"]

log = logging.getLogger(__name__)

KATAS = "/katas"
# GNU tar, writing exact mtimes and nothing the next reader must ignore.
TAR_OUT = ["tar", "-c", "--format=posix", "--sort=name", "--numeric-owner",
           "--pax-option=delete=atime,delete=ctime", "."]
TAR_IN = ["tar", "-x", "--same-owner", "--numeric-owner",
          "--preserve-permissions", "-C"]
GIT_CONFIG = b"[core]\n\trepositoryformatversion = 0\n\tbare = true\n"


@dataclass(frozen=True)
class _Manifest:
    """What the last run left: head commit and visible files' digests."""

    head: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> _Manifest:
        if not data.strip():
            return cls()
        fields = json.loads(data)
        return cls(fields.get("head"), dict(fields.get("files", {})))

    def dump(self) -> bytes:
        return json.dumps({"head": self.head, "files": dict(self.files)},
                          sort_keys=True).encode()


class KatasDataContainerRunner:
    """Runs katas kept in the Docker volume `volume`; see the module."""

    def __init__(
        self,
        volume: str = "tarpipe-katas",
        client: docker.DockerClient | None = None,
        owner: Owner | None = None,
        *,
        data_image: str = GCC,
        limits: ContainerLimits = ContainerLimits(),
        archive_limits: Limits = Limits(),
        clock: Clock = time.time_ns,
    ) -> None:
        self.volume = volume
        self._own_client = client is None
        self.client = client if client is not None else docker.from_env()
        self.owner = owner if owner is not None else Owner.current()
        self.data_image = data_image
        self.limits = limits
        self.archive_limits = archive_limits
        #: nanoseconds now: the mtime of visible files written, commit times
        self.clock = clock
        self._locks = KataLocks()
        self._data: str | None = None
        self._data_lock = threading.Lock()

    # -- the public calls ------------------------------------------------

    def run(
        self,
        kata_id: str,
        image: str,
        files: Mapping[str, bytes | str],
        *,
        max_seconds: float = 10,
    ) -> RunResult:
        """Run `cyber-dojo.sh` on the kata's sandbox; see the module."""
        visible = check_request(kata_id, files, max_seconds)
        require_image(self.client, image)
        with self._locks.hold(kata_id):
            return self._run(kata_id, image, visible, max_seconds)

    def history(self, kata_id: str) -> list[HistoryEntry]:
        """The kata's runs, oldest first, each with its visible files."""
        check_kata_id(kata_id)
        files = unpack_files(self._tar_out(f"{KATAS}/{kata_id}/git"),
                             limits=self.archive_limits)
        return history_from_files(files)

    def snapshot(self, kata_id: str) -> dict[str, FileState]:
        """Every file of the kata's sandbox now, with digest and mtime."""
        check_kata_id(kata_id)
        record: dict[str, FileState] = {}
        for _ in retar(self._tar_out(f"{KATAS}/{kata_id}/sandbox/"),
                       owner=self.owner, limits=self.archive_limits,
                       record=record):
            pass  # the record is what is wanted
        return record

    def kata_ids(self) -> list[str]:
        """The ids of the katas in the volume, sorted."""
        script = (f"cd {KATAS} && for name in *; do "
                  '[ -d "$name" ] && printf "%s\\n" "$name"; done; true')
        output = b"".join(exec_out(self.client, self._data_container(),
                                   ["sh", "-c", script]))
        names = output.decode("utf-8", "replace").splitlines()
        return sorted(name for name in names if KATA_ID_PATTERN.fullmatch(name))

    # -- one run -----------------------------------------------------------

    def _run(self, kata_id: str, image: str, visible: dict[str, bytes],
             max_seconds: float) -> RunResult:
        kata = f"{KATAS}/{kata_id}"
        manifest = self._manifest(kata)
        self._write_visible(kata, visible, manifest)

        before: dict[str, FileState] = {}
        after: dict[str, FileState] = {}
        token, rejected = None, ""
        with Sandbox(self.client, image, limits=self.limits) as box:
            box.put(retar(self._tar_out(f"{kata}/sandbox/"), owner=NOBODY,
                          limits=self.archive_limits, record=before))
            run = box.run(RUN_COMMAND, max_seconds=max_seconds)
            if not run.timed_out:
                try:
                    token = self._bring_back(kata, box.get(), after)
                except TarPipeError as error:
                    log.warning("kata %s: run's files not kept: %s",
                                kata_id, error)
                    rejected = str(error)

        kept = after if token else before
        self._commit(kata, visible, run_message(run), manifest, kept, token)
        log.debug("katas-data-container run of %s: status %s in %.3f s",
                  kata_id, run.status, run.duration)
        changes = diff(before, after) if token else FileDiff()
        return RunResult.of(run, changes, rejected=rejected)

    def _tar_out(self, folder: str) -> Iterator[bytes]:
        """The tar stream of `folder` in the volume, empty if it is missing."""
        script = (f'cd {shlex.quote(folder)} 2>/dev/null || '
                  'exec head -c 1024 /dev/zero; '
                  f'exec {shlex.join(TAR_OUT)}')
        return exec_out(self.client, self._data_container(),
                        ["sh", "-c", script])

    def _manifest(self, kata: str) -> _Manifest:
        script = f"cat {kata}/visible.json 2>/dev/null || true"
        output = b"".join(exec_out(self.client, self._data_container(),
                                   ["sh", "-c", script]))
        return _Manifest.parse(output)

    def _write_visible(self, kata: str, visible: dict[str, bytes],
                       manifest: _Manifest) -> None:
        """New and changed visible files in; dropped ones out; rest untouched."""
        changed = {name: content for name, content in visible.items()
                   if _digest(content) != manifest.files.get(name)}
        gone = sorted(set(manifest.files) - set(visible))
        script = (f"set -e; mkdir -p {kata}; cd {kata}; "
                  "[ -e sandbox ] || { mkdir -p s.0 && ln -s s.0 sandbox; }; "
                  f"cd sandbox/; rm -f -- {_words(gone)}; "
                  f"exec {shlex.join(TAR_IN)} .")
        stream = pack_files(changed, mtime_ns=self.clock(), owner=self.owner)
        exec_in(self.client, self._data_container(), ["sh", "-c", script],
                stream)

    def _bring_back(self, kata: str, stream: Iterator[bytes],
                    record: dict[str, FileState]) -> str:
        """The run's sandbox into a new s.TOKEN beside the current one."""
        token = secrets.token_hex(8)
        target = f"{kata}/s.{token}"
        script = f"set -e; mkdir {target}; exec {shlex.join(TAR_IN)} {target}"
        exec_in(self.client, self._data_container(), ["sh", "-c", script],
                retar(stream, owner=self.owner, limits=self.archive_limits,
                      record=record))
        return token

    def _commit(self, kata: str, visible: dict[str, bytes], message: str,
                manifest: _Manifest, sandbox: Mapping[str, FileState],
                token: str | None) -> None:
        """Commit the visible files and, if the run came back, flip to it.

        The sandbox link, the branch and the manifest each move by one
        rename, in that order; then older sandboxes are removed.
        """
        parent = ObjectID(manifest.head.encode()) if manifest.head else None
        objects, commit_id = build_commit(
            visible, parent=parent, message=message,
            commit_time=self.clock() // 1_000_000_000,
            executable=[name for name in visible if name.endswith(".sh")])
        digests = {name: state.digest for name, state in sandbox.items()
                   if name in visible and state.kind == "file"}
        branch = BRANCH.decode()
        files = {f"git/{path}": data
                 for path, data in loose_object_files(objects).items()}
        files["git/HEAD"] = b"ref: " + BRANCH + b"\n"
        files["git/config"] = GIT_CONFIG
        files[f"git/{branch}.new"] = commit_id + b"\n"
        files["visible.json.new"] = _Manifest(commit_id.decode(),
                                              digests).dump()
        flip = (f"ln -sfn s.{token} sandbox.new && mv -T sandbox.new sandbox; "
                if token else "")
        script = (
            f"set -e; cd {kata}; {shlex.join(TAR_IN)} .; {flip}"
            f"mv -f git/{branch}.new git/{branch}; "
            "mv -f visible.json.new visible.json; "
            'keep=$(readlink sandbox); for old in s.*; do '
            '[ "$old" = "$keep" ] || rm -rf -- "$old"; done')
        exec_in(self.client, self._data_container(), ["sh", "-c", script],
                pack_files(files, mtime_ns=self.clock(), owner=self.owner,
                           mode=0o444))

    # -- the data container -------------------------------------------------

    def _data_container(self) -> str:
        """The id of the data container holding the volume, made on first use."""
        with self._data_lock:
            if self._data is None:
                self._data = self._start_data_container()
            return self._data

    def _start_data_container(self) -> str:
        require_image(self.client, self.data_image)
        name = f"{self.volume}-data"
        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            container = self._create_data_container(name)
        if container.status != "running":
            container.start()
        log.debug("data container %s holds volume %s", name, self.volume)
        return cast(str, container.id)

    def _create_data_container(self, name: str) -> Container:
        try:
            return self.client.containers.create(
                self.data_image, ["sleep", "infinity"], name=name,
                volumes={self.volume: {"bind": KATAS, "mode": "rw"}},
                network_mode="none", read_only=True, init=True,
                cap_drop=["ALL"], cap_add=["CHOWN", "DAC_OVERRIDE", "FOWNER"],
                security_opt=["no-new-privileges"], user="0:0",
                labels={MANAGED_LABEL: "1", ROLE_LABEL: "data"}, detach=True)
        except docker.errors.APIError as error:
            if error.status_code != 409:  # 409: made meanwhile by another
                raise ContainerError(f"cannot create data container {name!r}: "
                                     f"{error}") from error
            return self.client.containers.get(name)

    def close(self) -> None:
        """Forget the data container (it stays) and close an own client."""
        self._data = None
        if self._own_client:
            self.client.close()

    def __enter__(self) -> KatasDataContainerRunner:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _words(names: list[str]) -> str:
    return " ".join(shlex.quote(name) for name in names)
