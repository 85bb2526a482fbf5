"""Fixtures shared by every test: the Docker engine for integration tests.

Without an engine the integration tests are skipped on a developer's
machine, but fail under CI (CI=true), where .ci/setup must have started
the engine and built the images.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import NoReturn

import docker
import docker.errors
import pytest
import requests

from runners.container import leftover_containers
from runners.images import BUSYBOX, GCC

IN_CI = os.environ.get("CI") == "true"


def _unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: run .ci/setup first)", pytrace=False)
    pytest.skip(reason)


def _connect() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException,
            requests.exceptions.RequestException) as error:
        _unavailable(f"no Docker engine answers: {error}")
    return client


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the local engine, with the project's images built.

    After the last test it checks that no container made by this test
    process is left (other processes' runs may be going on meanwhile).
    """
    client = _connect()
    for image in (BUSYBOX, GCC):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            client.close()
            _unavailable(f"image {image} is not built: run .ci/images")
    yield client
    leftovers = leftover_containers(client, pid=os.getpid())
    for container in leftovers:
        container.remove(force=True)
    client.close()
    assert not leftovers, (
        f"containers left behind: {[c.short_id for c in leftovers]}")


def remove_katas_volume(client: docker.DockerClient, name: str) -> None:
    """Remove katas volume `name` and the data container holding it."""
    for remove in (lambda: client.containers.get(f"{name}-data"),
                   lambda: client.volumes.get(name)):
        with contextlib.suppress(docker.errors.NotFound):
            remove().remove(force=True)
