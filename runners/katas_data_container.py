"""The katas-data-container runner: atomic runs, no host folder at all.

The katas live in a named Docker volume, mounted at /katas in a data
container that this runner creates on first use and keeps (it has no
network, like every container here).  One folder a kata::

    /katas/KATA_ID/sandbox -> s.TOKEN   the sandbox, behind a symlink
    /katas/KATA_ID/s.TOKEN/             the files of the last good run
    /katas/KATA_ID/git/                 bare repository, visible files
    /katas/KATA_ID/visible.json         head commit, visible files' digests

A run costs two requests to the data container, each a script run
through a long-lived exec session (`runners.session`: an exec costs
about 60 ms here, a request about 2), and one pre-started ("warm")
container from a pool (`runners.warm`):

1. one request writes the visible files that changed into the sandbox
   (the only change a timed-out run leaves) and streams *all* sandbox
   files out, through `retar` (checked, re-owned to `nobody`, mtimes
   exact to the nanosecond), straight into the warm container, where
   `cyber-dojo.sh` runs;
2. if it finished within its limit, the files it changed stream back
   through `retar` (re-owned to the outside owner) into a new `s.TOKEN`
   beside the old one, with the run's commit, in one more request.
   Files the run left exactly as they were do not travel: they are
   hard-linked from the old sandbox, since creating a file on the
   volume costs thirty times a link.  The symlink is flipped by one rename.  Until
   that rename the kata is exactly as before; after it, exactly as the
   run left it.  A run that timed out, or whose files broke a rule,
   brings nothing back: as if the attempt was never made.

The manifest is read once per kata and process, then kept in memory;
each script first checks the kata's branch is still where the manifest
says, and if another runner moved it, the manifest is read again and
the run retried.  Runs of one kata are serialized within this process;
runners in two processes may take turns on a kata, but must not run it
at the same moment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shlex
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

import docker
import docker.errors
from docker.models.containers import Container
from dulwich.objects import ObjectID

from tarpipe import (
    NOBODY,
    Limits,
    Owner,
    TarStream,
    concat,
    pack_directories,
    pack_files,
    retar,
)
from tarpipe._header import Kind, member_header
from tarpipe.errors import TarPipeError
from tarpipe.filediff import FileState, diff
from tarpipe.memory import unpack_files

from ._base import (
    KATA_ID_PATTERN,
    Clock,
    KataLocks,
    Runner,
    RunResult,
    check_kata_id,
    check_request,
    files_back,
    merged_sandbox,
    run_message,
)
from .container import (
    MANAGED_LABEL,
    ROLE_LABEL,
    ContainerLimits,
    ExecResult,
    _engine,
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
from .seccomp import security_options
from .session import SessionPool
from .warm import ContainerPool, WarmRun

__all__ = ["KatasDataContainerRunner"]

log = logging.getLogger(__name__)

KATAS = "/katas"
# GNU tar, writing exact mtimes and nothing the next reader must ignore.
TAR_OUT = ["tar", "-c", "--format=posix", "--sort=name", "--numeric-owner",
           "--pax-option=delete=atime,delete=ctime", "."]
TAR_IN = ["tar", "-x", "--same-owner", "--numeric-owner",
          "--preserve-permissions", "-C"]
# Exit status of a data-container script that found the kata's branch
# not where this runner's manifest said: another runner moved it.
_STALE = 75
# Script: remove every sandbox folder but the one `sandbox` links to (the
# one a flip left behind, and any half-filled one of a failed bring-back,
# a full volume say, whose room the commit may need) and every staged
# history (`o.*`, see `_commit`), with one rm.
_CLEAR_OLD = ('keep=$(readlink sandbox || true); set --; '
              'for old in s.* o.*; do [ ! -e "$old" ] || '
              '[ "$old" = "$keep" ] || set -- "$@" "$old"; done; '
              '[ $# -eq 0 ] || rm -rf -- "$@"; ')
GIT_CONFIG = b"[core]\n\trepositoryformatversion = 0\n\tbare = true\n"


@dataclass(frozen=True)
class _Manifest:
    """What the last run left: head commit and visible files' digests."""

    head: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    #: ids of the head commit's blobs, when this process wrote it: those
    #: are in the repository, and need not be sent again
    blobs: frozenset[bytes] = frozenset()

    @classmethod
    def parse(cls, data: bytes) -> _Manifest:
        if not data.strip():
            return cls()
        fields = json.loads(data)
        return cls(fields.get("head"), dict(fields.get("files", {})))

    def dump(self) -> bytes:
        return json.dumps({"head": self.head, "files": dict(self.files)},
                          sort_keys=True).encode()


class KatasDataContainerRunner(Runner):
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
        pool_size: int = 2,
    ) -> None:
        self.volume = volume
        super().__init__(client)
        self.owner = owner if owner is not None else Owner.current()
        self.data_image = data_image
        self.limits = limits
        self.archive_limits = archive_limits
        #: nanoseconds now: the mtime of visible files written, commit times
        self.clock = clock
        self._locks = KataLocks()
        self._data: str | None = None
        self._data_lock = threading.Lock()
        self._manifests: dict[str, _Manifest] = {}
        self._pool = ContainerPool(self.client, limits=limits,
                                   size=pool_size)
        self._sessions = SessionPool(self.client, self._data_container,
                                     revive=self._revive_data_container)

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
        with self._locks.hold(kata_id):
            try:
                return self._run(kata_id, image, visible, max_seconds)
            except ContainerError as error:
                if error.status != _STALE:
                    raise
            # Another runner ran the kata since its manifest was read
            # here: read it again, and run once more.
            log.debug("kata %s moved on elsewhere: reading it again", kata_id)
            self._manifests.pop(kata_id, None)
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
        output = self._sessions.run(script)
        names = output.decode("utf-8", "replace").splitlines()
        return sorted(name for name in names if KATA_ID_PATTERN.fullmatch(name))

    # -- one run -----------------------------------------------------------

    def _run(self, kata_id: str, image: str, visible: dict[str, bytes],
             max_seconds: float) -> RunResult:
        kata = f"{KATAS}/{kata_id}"
        # Taken first: a missing image is found out before the kata is
        # written to.
        warm = self._pool.take(image)
        try:
            manifest = self._manifest(kata_id)
            before: dict[str, FileState] = {}
            sandbox = retar(
                self._write_visible_and_read(kata, visible, manifest),
                owner=NOBODY, limits=self.archive_limits, record=before)
            token, rejected = secrets.token_hex(8), ""
            with warm.run(sandbox, max_seconds=max_seconds) as done:
                run, rejected = done.result, done.failure
                if run.timed_out or rejected:
                    self._commit(kata_id, visible, run, manifest, before)
                    return RunResult.of(run, rejected=rejected)
                back = _FilesBack(done, before, self.owner,
                                  self.archive_limits, f"s.{token}/")
                try:
                    self._commit(kata_id, visible, run, manifest, before,
                                 back, token)
                    after = back.sandbox()
                except TarPipeError as error:
                    if getattr(error, "status", None) == _STALE:
                        raise
                    log.warning("kata %s: files of the run not kept: %s",
                                kata_id, error)
                    self._commit(kata_id, visible, run, manifest, before)
                    return RunResult.of(run, rejected=str(error))
        finally:
            self._pool.give_back(warm)
        log.debug("katas-data-container run of %s: status %s in %.3f s",
                  kata_id, run.status, run.duration)
        return RunResult.of(run, diff(before, after))

    def _tar_out(self, folder: str) -> Iterator[bytes]:
        """The tar stream of `folder` in the volume, empty if it is missing."""
        script = (f'cd {shlex.quote(folder)} 2>/dev/null || '
                  'exec head -c 1024 /dev/zero; '
                  f'exec {shlex.join(TAR_OUT)}')
        return self._sessions.call(script)

    def _manifest(self, kata_id: str) -> _Manifest:
        """What the last run left; read from the volume once per process."""
        manifest = self._manifests.get(kata_id)
        if manifest is None:
            script = f"cat {KATAS}/{kata_id}/visible.json 2>/dev/null || true"
            output = self._sessions.run(script)
            manifest = self._manifests[kata_id] = _Manifest.parse(output)
        return manifest

    def _write_visible_and_read(self, kata: str, visible: dict[str, bytes],
                                manifest: _Manifest) -> Iterator[bytes]:
        """Write the visible files that changed; then stream the sandbox.

        One request: new and changed visible files in (the rest keep their
        mtimes), dropped ones out, then every sandbox file out as tar.
        """
        changed = {name: content for name, content in visible.items()
                   if _digest(content) != manifest.files.get(name)}
        gone = sorted(set(manifest.files) - set(visible))
        # A run of nothing new (the same files again) starts no tar -x.
        write = f"rm -f -- {_words(gone)}; " if gone else ""
        if changed:
            write += f"{shlex.join(TAR_IN)} .; "
        script = (f"set -e; mkdir -p {kata}; cd {kata}; "
                  f"{_still_at(manifest.head)}"
                  "[ -e sandbox ] || { mkdir -p s.0 && ln -s s.0 sandbox; }; "
                  f"cd sandbox/; {write}exec {shlex.join(TAR_OUT)}")
        if not changed:
            return self._sessions.call(script)
        stream = pack_files(changed, mtime_ns=self.clock(), owner=self.owner)
        return self._sessions.call(script, stream)

    def _commit(
        self,
        kata_id: str,
        visible: dict[str, bytes],
        run: ExecResult,
        manifest: _Manifest,
        before: Mapping[str, FileState],
        back: _FilesBack | None = None,
        token: str = "",
    ) -> None:
        """Commit the visible files; with the run's files `back`, swap them in.

        One script, one tar stream: the run's files into a new `s.TOKEN`
        folder beside the current sandbox; then a hard link to the
        current sandbox's copy of each file that did not travel, as the
        run left it as it was (a link costs a thirtieth of a new file
        here); then the run's folders again, so that their mtimes are
        set after those links; then the new history objects (blobs the
        last commit has are not sent again), and the new branch and
        manifest.  The history's files go into a staging folder
        `o.STAGE`, never straight into `git/`: a stream cut inside an
        object would leave a part of it there. The manifest comes last,
        so its arrival proves the whole stream did (GNU tar takes an
        archive cut at a member's end for a whole one).  Only then are
        the staged objects hard-linked into `git/` (each whole, or not
        there), and the sandbox link, the branch and the manifest each
        moved by one rename, in that order; older sandboxes and staging
        folders are removed after.
        """
        kata = f"{KATAS}/{kata_id}"
        stage = f"o.{secrets.token_hex(8)}"
        parent = ObjectID(manifest.head.encode()) if manifest.head else None
        objects, commit_id = build_commit(
            visible, parent=parent, message=run_message(run),
            commit_time=self.clock() // 1_000_000_000,
            executable=[name for name in visible if name.endswith(".sh")])
        blobs = frozenset(each.id for each in objects
                          if each.type_name == b"blob")
        new_objects = [each for each in objects
                       if each.id not in manifest.blobs]
        updated: list[_Manifest] = []

        def history() -> TarStream:
            # Made when the run's files have gone by.
            sandbox = before if back is None else back.sandbox()
            digests = {name: state.digest for name, state in sandbox.items()
                       if name in visible and state.kind == "file"}
            updated.append(_Manifest(commit_id.decode(), digests, blobs))
            branch = BRANCH.decode()
            members = {f"{stage}/git/{path}": data
                       for path, data in loose_object_files(new_objects).items()}
            members[f"{stage}/git/HEAD"] = b"ref: " + BRANCH + b"\n"
            members[f"{stage}/git/config"] = GIT_CONFIG
            members[f"{stage}/git/{branch}.new"] = commit_id + b"\n"
            members["visible.json.new"] = updated[0].dump()
            files = pack_files(members, mtime_ns=self.clock(),
                               owner=self.owner, mode=0o444)
            if back is None:
                return files
            prefix = f"s.{token}/"
            return concat(
                TarStream(_links_to_sandbox(back.kept(), prefix, self.owner)),
                pack_directories(sandbox, owner=self.owner, prefix=prefix),
                files)

        stream = concat(*([back.stream] if back is not None else []), history)
        folder, flip = "", ""
        if back is not None:
            folder = f"mkdir s.{token}; "
            flip = (f"ln -sfn s.{token} sandbox.new && "
                    "mv -T sandbox.new sandbox; ")
        script = (
            f"set -e; cd {kata}; {_still_at(manifest.head)}{_CLEAR_OLD}"
            f"rm -f visible.json.new; {folder}"
            f"{shlex.join(TAR_IN)} .; test -f visible.json.new; "
            f"mkdir -p git; cp -Rlf {stage}/git/. git/; {flip}"
            f"mv -f git/{BRANCH.decode()}.new git/{BRANCH.decode()}; "
            f"mv -f visible.json.new visible.json; {_CLEAR_OLD}")
        self._manifests.pop(kata_id, None)
        self._sessions.run(script, stream)
        self._manifests[kata_id] = updated[0]

    # -- the data container -------------------------------------------------

    def _data_container(self) -> str:
        """The id of the data container holding the volume, made on first use."""
        with self._data_lock:
            if self._data is None:
                self._data = self._start_data_container()
            return self._data

    def _revive_data_container(self) -> str:
        """The data container again, started if it stopped (say, with the
        engine): called when a session cannot be opened in it."""
        with self._data_lock:
            self._data = None
        return self._data_container()

    def _start_data_container(self) -> str:
        require_image(self.client, self.data_image)
        name = f"{self.volume}-data"
        # An engine going down refuses with a 500 ("transport is closing")
        # as well as by not answering: both are the runner's errors.
        with _engine(f"start data container {name!r}"):
            try:
                container = self.client.containers.get(name)
            except docker.errors.NotFound:
                container = self._create_data_container(name)
            if container.status != "running":
                container = self._started(container, name)
        log.debug("data container %s holds volume %s", name, self.volume)
        return cast(str, container.id)

    def _started(self, container: Container, name: str) -> Container:
        """Start the stopped data container, or a new one in its place.

        An engine killed while it started the container can leave that
        container's runtime folder behind, and then refuse every start
        of it ("failed to start shim: ... file exists"): it is removed
        (the volume stays: it is named) and made again.
        """
        try:
            container.start()
            return container
        except docker.errors.APIError as error:
            if error.status_code != 500:
                raise
            log.warning("data container %s does not start (%s): making it "
                        "again; volume %s stays", name,
                        error.explanation or error, self.volume)
        container.remove(force=True)
        again = self._create_data_container(name)
        again.start()
        return again

    def _create_data_container(self, name: str) -> Container:
        try:
            return self.client.containers.create(
                self.data_image, ["sleep", "infinity"], name=name,
                volumes={self.volume: {"bind": KATAS, "mode": "rw"}},
                network_disabled=True, network_mode="none",
                read_only=True, init=True,
                cap_drop=["ALL"], cap_add=["CHOWN", "DAC_OVERRIDE", "FOWNER"],
                security_opt=security_options(self.client), user="0:0",
                labels={MANAGED_LABEL: "1", ROLE_LABEL: "data"}, detach=True)
        except docker.errors.APIError as error:
            if error.status_code != 409:  # 409: made meanwhile by another
                raise ContainerError(f"cannot create data container {name!r}: "
                                     f"{error}") from error
            return self.client.containers.get(name)

    def close(self) -> None:
        """Remove the warm containers; forget the data container (it stays)."""
        self._pool.close()
        self._sessions.close()
        self._data = None
        super().close()



class _FilesBack:
    """A finished run's files on their way into a new sandbox folder.

    `stream` is what the warm container sends (see `files_back`),
    checked, re-owned and put in folder `prefix`; once it is read,
    `sandbox()` is the whole sandbox after the run and `kept()` the
    files that did not travel, to be linked from the old folder.
    """

    def __init__(self, done: WarmRun, before: Mapping[str, FileState],
                 owner: Owner, limits: Limits, prefix: str) -> None:
        files, self._same = files_back(done, before)
        self._fetched: dict[str, FileState] = {}
        self._left_out: set[str] = set()
        self._limits = limits
        self._sandbox: dict[str, FileState] | None = None
        self.stream = retar(files, owner=owner, limits=limits,
                            record=self._fetched, prefix=prefix,
                            already_there=before, left_out=self._left_out)

    def sandbox(self) -> dict[str, FileState]:
        if self._sandbox is None:
            self._sandbox = merged_sandbox(self._same, self._fetched,
                                           self._limits)
        return self._sandbox

    def kept(self) -> set[str]:
        return (self._same.keys() - self._fetched.keys()) | self._left_out


def _still_at(head: str | None) -> str:
    """Script: stop with _STALE, changing nothing, if the branch moved."""
    ref = f"git/{BRANCH.decode()}"
    return (f'[ "$(cat {ref} 2>/dev/null || true)" = "{head or ""}" ] '
            f"|| exit {_STALE}; ")


def _links_to_sandbox(kept: set[str], prefix: str,
                      owner: Owner) -> Generator[bytes, None, None]:
    """Hard-link members: each kept file, in folder `prefix`, from its
    copy in the current sandbox (the link `sandbox/` leads there)."""
    for name in sorted(kept):
        yield member_header(prefix + name, Kind.HARDLINK, mode=0o644,
                            mtime_ns=0, owner=owner,
                            linkname=f"sandbox/{name}")


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _words(names: list[str]) -> str:
    return " ".join(shlex.quote(name) for name in names)
