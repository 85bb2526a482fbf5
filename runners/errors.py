"""Every error the runners raise, below tarpipe's own base.

    TarPipeError                  (tarpipe.errors) base of them all
     +-- RunnerError              base of the runners' errors
          +-- BadRequestError     a run request was refused before starting
          +-- EngineError         the Docker engine cannot be reached
          +-- ImageNotFoundError  an image is not built here (.image)
          +-- ContainerError      a container step failed (.stderr)

A run that times out, or whose program fails, is not an error: it is a
result (`ExecResult.timed_out`, `ExecResult.status`).
"""

from __future__ import annotations

from tarpipe.errors import TarPipeError

__all__ = [
    "BadRequestError",
    "ContainerError",
    "EngineError",
    "ImageNotFoundError",
    "RunnerError",
]


class RunnerError(TarPipeError):
    """Base class of every error raised by the runners."""


class BadRequestError(RunnerError):
    """A run request was refused before any container started."""


class EngineError(RunnerError):
    """The Docker engine did not answer, or answered out of protocol."""


class ImageNotFoundError(RunnerError):
    """The image named by `image` is not among the engine's images."""

    def __init__(self, image: str) -> None:
        super().__init__(
            f"image {image!r} is not built on this machine: "
            "run .ci/images (or .ci/setup) to build it")
        self.image = image


class ContainerError(RunnerError):
    """A container step failed; `stderr` holds what the step wrote there.

    `status` is the exit status of the command that failed, when one
    ended with a status.
    """

    def __init__(self, message: str, stderr: bytes = b"", *,
                 status: int | None = None) -> None:
        if stderr:
            text = stderr.decode("utf-8", "replace").strip()
            message = f"{message}: {text}"
        super().__init__(message)
        self.stderr = stderr
        self.status = status
