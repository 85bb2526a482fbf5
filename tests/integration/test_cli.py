"""The command line against the real engine: runs, time-outs, katas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from runners import RunResult, cli
from runners.container import leftover_containers
from runners.images import BUSYBOX, GCC
from tests.conftest import remove_katas_volume

pytestmark = pytest.mark.docker

ROOT = Path(__file__).parents[2]


def tarpipe(*argv: str, client: docker.DockerClient
            ) -> tuple[int, str, str]:
    """`python -m tarpipe ARGV`: status, stdout, stderr; nothing left."""
    with subprocess.Popen(
            [sys.executable, "-m", "tarpipe", *argv], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        out, err = process.communicate(timeout=60)
    assert leftover_containers(client, pid=process.pid) == []
    return process.returncode, out, err


def kata(folder: Path, script: str) -> Path:
    folder.mkdir()
    (folder / "cyber-dojo.sh").write_text(script)
    return folder


def test_the_c_kata_runs_and_prints_one_json_object(
    docker_client: docker.DockerClient
) -> None:
    status, out, err = tarpipe("run", "examples/c-kata", "--image", GCC,
                               "--json", client=docker_client)
    fields = json.loads(out)
    assert status == fields["status"] == 0, err
    assert fields["timed_out"] is False
    assert "total 820, expected 820" in fields["stdout"]
    assert "hiker" in fields["created"]
    assert fields["deleted"] == fields["changed"] == []
    assert set(fields) == set(RunResult.__dataclass_fields__)


def test_the_script_status_is_the_exit_status(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    folder = kata(tmp_path / "k", "echo made > out.txt; echo oops >&2; "
                                  "exit 3\n")
    status, out, err = tarpipe("run", str(folder), "--image", BUSYBOX,
                               client=docker_client)
    assert status == 3
    assert err == ""
    assert "=== stderr ===\noops\n" in out
    assert "status:    3\n" in out
    assert "created:   out.txt\n" in out


def test_a_timed_out_run_exits_124(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    folder = kata(tmp_path / "k", "echo started; sleep 30\n")
    status, out, _ = tarpipe("run", str(folder), "--image", BUSYBOX,
                             "--max-seconds", "1", "--json",
                             client=docker_client)
    fields = json.loads(out)
    assert status == 124
    assert fields["timed_out"] is True
    assert fields["status"] is None
    assert 1 <= fields["duration"] < 10


def test_an_interrupt_exits_130_quietly_and_leaves_no_container(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    folder = kata(tmp_path / "k", "sleep 30\n")
    with subprocess.Popen(
            [sys.executable, "-m", "tarpipe", "run", str(folder), "--image",
             BUSYBOX], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        deadline = time.monotonic() + 30
        while not leftover_containers(docker_client, pid=process.pid):
            assert time.monotonic() < deadline, "no container started"
            time.sleep(0.05)
        time.sleep(0.3)  # into the script's run, past the container's start
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert (process.returncode, out, err) == (130, "", "")
    assert leftover_containers(docker_client, pid=process.pid) == []


def test_a_missing_image_is_one_line_and_exit_1(
    docker_client: docker.DockerClient
) -> None:
    status, out, err = tarpipe("run", "examples/c-kata", "--image",
                               "tarpipe/missing:0", "--json",
                               client=docker_client)
    assert (status, out) == (1, "")
    assert err.startswith("tarpipe: error: image 'tarpipe/missing:0' is not")
    assert len(err.splitlines()) == 1


def test_images_says_which_are_built(
    docker_client: docker.DockerClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["images"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # docker_client has checked that both are built
    assert lines[:2] == [f"{BUSYBOX:<20} built", f"{GCC:<20} built"]
    assert "bash .ci/images" in " ".join(lines[2:])


@pytest.fixture
def volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A katas volume of this test; it and its data container go after."""
    name = f"tarpipe-cli-test-{os.getpid()}"
    yield name
    remove_katas_volume(docker_client, name)


def test_katas_and_history_of_a_data_container_volume(
    docker_client: docker.DockerClient, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, volume: str
) -> None:
    folder = kata(tmp_path / "k1", "echo one\n")
    store = ["--volume", volume]
    run = ["run", str(folder), "--image", BUSYBOX, "--runner",
           "katas-data-container", *store]
    assert cli.main(run) == 0
    (folder / "cyber-dojo.sh").write_text("echo two; exit 5\n")
    assert cli.main(run) == 5
    assert cli.main([*run, "--kata-id", "k2"]) == 5
    capsys.readouterr()

    assert cli.main(["katas", *store]) == 0
    assert capsys.readouterr().out == "k1  2 runs\nk2  1 run\n"

    assert cli.main(["history", "k1", *store, "--json"]) == 0
    commits = json.loads(capsys.readouterr().out)["commits"]
    assert [c["subject"].split(" in ")[0] for c in commits] == [
        "exit status 0", "exit status 5"]
    assert [c["files"] for c in commits] == [["cyber-dojo.sh"]] * 2

    assert cli.main(["history", "k3", *store]) == 1
    assert capsys.readouterr().err == (
        f"tarpipe: error: no kata 'k3' in volume {volume!r}\n")


def test_listing_a_missing_volume_creates_nothing(
    docker_client: docker.DockerClient, capsys: pytest.CaptureFixture[str],
    volume: str
) -> None:
    assert cli.main(["katas", "--volume", volume]) == 1
    assert capsys.readouterr().err == (
        f"tarpipe: error: no Docker volume {volume!r}\n")
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(volume)
