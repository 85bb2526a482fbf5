"""The tmp runner: the visible files, brand new, in a throw-away container."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import docker

from tarpipe import NOBODY, Limits, TarPipeError, pack_files, retar
from tarpipe.filediff import FileState, diff

from ._base import (
    Clock,
    Runner,
    RunResult,
    check_request,
    files_back,
    merged_sandbox,
)
from .container import ContainerLimits
from .warm import ContainerPool

__all__ = ["TmpRunner"]

log = logging.getLogger(__name__)


class TmpRunner(Runner):
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
        pool_size: int = 2,
    ) -> None:
        super().__init__(client)
        self.limits = limits
        #: nanoseconds now: the mtime given to the visible files
        self.clock = clock
        self._pool = ContainerPool(self.client, limits=limits, size=pool_size)

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
        before: dict[str, FileState] = {}
        stream = pack_files(visible, mtime_ns=self.clock(), owner=NOBODY,
                            record=before)
        warm = self._pool.take(image)
        try:
            with warm.run(stream, max_seconds=max_seconds) as done:
                if done.result.timed_out or done.failure:
                    return RunResult.of(done.result, rejected=done.failure)
                back, same = files_back(done, before)
                fetched: dict[str, FileState] = {}
                try:
                    for _ in retar(back, owner=NOBODY, record=fetched):
                        pass  # only the record of what is there is wanted
                    after = merged_sandbox(same, fetched, Limits())
                except TarPipeError as error:
                    return RunResult.of(done.result, rejected=str(error))
        finally:
            self._pool.give_back(warm)
        log.debug("tmp run of %s: status %s in %.3f s",
                  kata_id, done.result.status, done.result.duration)
        return RunResult.of(done.result, diff(before, after))

    def close(self) -> None:
        """Remove the warm containers; close the client if this runner made it."""
        self._pool.close()
        super().close()

