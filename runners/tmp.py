"""The tmp runner: the visible files, brand new, in a throw-away container."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import TracebackType

import docker

from tarpipe import NOBODY, pack_files, retar
from tarpipe.filediff import FileState, diff

from ._base import RUN_COMMAND, Clock, RunResult, check_request
from .container import ContainerLimits, Sandbox
from .images import require_image

__all__ = ["TmpRunner"]

log = logging.getLogger(__name__)


class TmpRunner:
    """Runs the visible files and keeps nothing.

    Every file enters the container stamped with the time of the run, so
    every build starts from scratch; only the visible files are there.
    The caller keeps the files: nothing is written anywhere on the host.
    """

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        limits: ContainerLimits = ContainerLimits(),
        clock: Clock = time.time_ns,
    ) -> None:
        self._own_client = client is None
        self.client = client if client is not None else docker.from_env()
        self.limits = limits
        #: nanoseconds now: the mtime given to visible files written
        self.clock = clock

    def run(
        self,
        kata_id: str,
        image: str,
        files: Mapping[str, bytes | str],
        *,
        max_seconds: float = 10,
    ) -> RunResult:
        """Run `cyber-dojo.sh` among `files` in `image`, at most `max_seconds`."""
        visible = check_request(kata_id, files, max_seconds)
        require_image(self.client, image)
        before: dict[str, FileState] = {}
        with Sandbox(self.client, image, limits=self.limits) as box:
            box.put(pack_files(visible, mtime_ns=self.clock(), owner=NOBODY,
                               record=before))
            run = box.run(RUN_COMMAND, max_seconds=max_seconds)
            if run.timed_out:
                return RunResult.of(run)
            after: dict[str, FileState] = {}
            for _ in retar(box.get(), owner=NOBODY, record=after):
                pass  # only the record of what is there is wanted
        log.debug("tmp run of %s: status %s in %.3f s",
                  kata_id, run.status, run.duration)
        return RunResult.of(run, diff(before, after))

    def close(self) -> None:
        """Close the Docker client if this runner made it."""
        if self._own_client:
            self.client.close()

    def __enter__(self) -> TmpRunner:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
