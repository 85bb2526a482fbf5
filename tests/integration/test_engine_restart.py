"""The Docker engine restarted in the middle of a run.

The engine is stopped (SIGTERM, as `systemctl restart docker` does) while
a data-container run is going on, and started again with the command
line it had. The run in flight must end with a clear error, the kata
must be as it was (or as it was with only the visible files written,
the one change a run makes before its script starts), and the next run,
through the same runner objects, must work: their warm containers and
exec sessions died with the engine, and the data container stopped.

This needs an engine this process may restart: root, and a dockerd whose
pid file names it (as .ci/setup starts it). Elsewhere the test skips,
but under CI=true it fails instead.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from runners import KatasDataContainerRunner, RunResult, TmpRunner
from runners.errors import RunnerError
from runners.images import BUSYBOX
from tarpipe import Owner
from tarpipe.filediff import FileState
from tests.conftest import remove_katas_volume

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

PID_FILE = Path("/var/run/docker.pid")
LOG_FILE = Path("/var/log/tarpipe-dockerd.log")
ENGINE_SECONDS = 90.0
OUTSIDE = Owner(4321, 4321, "cyber-dojo", "cyber-dojo")
SLOW = "echo started; sleep 30\n"

def dockerd() -> tuple[int, list[bytes]]:
    """The running dockerd's pid and command line."""
    try:
        pid = int(PID_FILE.read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except (OSError, ValueError) as error:
        reason = f"no dockerd to restart: {error}"
    else:
        if os.geteuid() == 0 and argv and argv[0].endswith(b"dockerd"):
            return pid, argv
        reason = "restarting dockerd needs root and a dockerd pid file"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def answers(client: docker.DockerClient) -> bool:
    try:
        return bool(client.ping())
    except (docker.errors.DockerException,
            requests.exceptions.RequestException):
        return False


def restart_engine(client: docker.DockerClient) -> float:
    """Stop dockerd, start it again as it was; seconds it was away."""
    pid, argv = dockerd()
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    deadline = started + ENGINE_SECONDS
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.1)
    # Through a shell that leaves it running: dockerd outlives the test.
    subprocess.run(["sh", "-c", f'"$@" >>{LOG_FILE} 2>&1 </dev/null &',
                    "sh", *argv], check=True, start_new_session=True)
    while not answers(client):
        assert time.monotonic() < deadline, "dockerd did not come back"
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture
def katas_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"tarpipe-restart-{os.getpid()}"
    yield name
    remove_katas_volume(docker_client, name)


def without(sandbox: dict[str, FileState], name: str) -> dict[str, FileState]:
    return {key: value for key, value in sandbox.items() if key != name}


def test_a_run_when_the_engine_restarts_fails_cleanly_and_the_next_works(
    docker_client: docker.DockerClient, katas_volume: str
) -> None:
    dockerd()  # skip (or fail under CI) before anything is made
    kata = "restarted"
    first = {"cyber-dojo.sh": "echo built > build.o; echo one\n",
             "hiker.c": "int answer = 42;\n"}
    with KatasDataContainerRunner(katas_volume, docker_client,
                                  owner=OUTSIDE) as katas, \
            TmpRunner(docker_client) as tmp:
        assert katas.run(kata, BUSYBOX, first).stdout == "one\n"
        assert tmp.run("t", BUSYBOX, {"cyber-dojo.sh": "true"}).status == 0
        before = katas.snapshot(kata)

        outcome: list[RunResult | BaseException] = []

        def slow_run() -> None:
            try:
                outcome.append(katas.run(
                    kata, BUSYBOX, {**first, "cyber-dojo.sh": SLOW},
                    max_seconds=60))
            except BaseException as error:
                outcome.append(error)

        thread = threading.Thread(target=slow_run)
        thread.start()
        time.sleep(1.5)  # the script is sleeping by now
        away = restart_engine(docker_client)
        thread.join(ENGINE_SECONDS)

        assert not thread.is_alive()
        assert isinstance(outcome[0], RunnerError), outcome
        print(f"\nengine away {away:.1f} s; the run said: {outcome[0]}")
        after = katas.snapshot(kata)
        assert without(after, "cyber-dojo.sh") == \
            without(before, "cyber-dojo.sh")
        assert after["cyber-dojo.sh"].digest in (
            before["cyber-dojo.sh"].digest,
            hashlib.sha256(SLOW.encode()).hexdigest())

        again = katas.run(kata, BUSYBOX, {**first, "cyber-dojo.sh":
                                          "cat build.o; echo two\n"})
        assert (again.status, again.stdout, again.rejected) == (
            0, "built\ntwo\n", "")
        assert [entry.files["cyber-dojo.sh"] for entry
                in katas.history(kata)] == [
            first["cyber-dojo.sh"].encode(), b"cat build.o; echo two\n"]
        assert tmp.run("t", BUSYBOX, {"cyber-dojo.sh": "echo ok"}).stdout \
            == "ok\n"
