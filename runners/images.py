"""The images this project builds, by tag, and a check that one is here.

No registry can be reached, so nothing is pulled: `.ci/images` builds
each image from Debian packages (`.ci/setup` runs it). A tag names one
recipe there; a changed recipe gets a new tag in both places.
"""

from __future__ import annotations

import docker
import docker.errors
import requests

from .errors import EngineError, ImageNotFoundError

__all__ = ["BUSYBOX", "GCC", "require_image"]

#: busybox-static applets (busybox tar), root and nobody: a second to build
BUSYBOX = "tarpipe/busybox:1"
#: Debian minbase with make, gcc, libc6-dev and GNU tar
GCC = "tarpipe/gcc:1"


def require_image(client: docker.DockerClient, name: str) -> None:
    """Raise `ImageNotFoundError` unless the engine has image `name`.

    Raises `EngineError` when the engine cannot be asked.
    """
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        raise ImageNotFoundError(name) from None
    except (docker.errors.DockerException,
            requests.exceptions.RequestException) as error:
        raise EngineError(
            f"cannot ask the Docker engine for image {name!r}: {error}"
        ) from error
