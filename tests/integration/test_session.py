"""Exec sessions: many scripts through one exec, and what breaks one."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import docker
import pytest

from runners.container import MANAGED_LABEL, PID_LABEL, remove_container
from runners.errors import ContainerError
from runners.images import GCC
from runners.session import Session, SessionPool

pytestmark = pytest.mark.docker


@pytest.fixture
def container(docker_client: docker.DockerClient) -> Iterator[str]:
    """A running container with Perl, no network, removed after."""
    made = docker_client.containers.run(
        GCC, ["sleep", "infinity"], detach=True, init=True,
        network_disabled=True, network_mode="none",
        labels={MANAGED_LABEL: "1", PID_LABEL: str(os.getpid())})
    yield str(made.id)
    remove_container(docker_client, str(made.id))


@pytest.fixture
def session(docker_client: docker.DockerClient,
            container: str) -> Iterator[Session]:
    opened = Session(docker_client, container)
    yield opened
    opened.close()


def perl_servers(client: docker.DockerClient, container: str) -> int:
    top = client.api.top(container)
    command = top["Titles"].index("CMD")
    return sum(1 for process in top["Processes"]
               if process[command].startswith("perl -e"))


def test_one_session_runs_script_after_script(
    session: Session
) -> None:

    assert b"".join(session.call("echo one")) == b"one\n"
    assert b"".join(session.call("cat; echo two", [b"in", b"put "])) == \
        b"input two\n"
    assert b"".join(session.call("head -c 3000000 /dev/zero")) == \
        bytes(3_000_000)
    assert session.usable


def test_a_new_session_says_nothing_until_asked(session: Session) -> None:
    # Anything the server wrote unasked (a Perl warning as it compiles,
    # say) would make the session look ended when next taken.
    time.sleep(0.5)

    assert session.usable
    assert b"".join(session.call("echo asked")) == b"asked\n"


def test_a_failing_script_raises_its_status_and_stderr_and_the_session_goes_on(
    session: Session
) -> None:

    with pytest.raises(ContainerError) as failed:
        list(session.call("echo why >&2; exit 75"))

    assert failed.value.status == 75
    assert b"why" in failed.value.stderr
    assert b"".join(session.call("echo after")) == b"after\n"


def test_input_a_script_leaves_unread_does_not_reach_the_next_script(
    session: Session
) -> None:

    assert b"".join(session.call("true", [os.urandom(300_000)])) == b""
    assert b"".join(session.call("wc -c", [b"12345"])) == b"5\n"


def test_input_that_breaks_off_ends_early_and_the_script_is_waited_for(
    session: Session
) -> None:

    def broken() -> Iterator[bytes]:
        yield b"first part\n"
        raise ValueError("the input broke")

    started = time.monotonic()
    with pytest.raises(ValueError, match="the input broke"):
        list(session.call("cat > /tmp/got; sleep 1; echo done > /tmp/done",
                          broken()))

    assert time.monotonic() - started >= 1  # the script was waited for
    assert b"".join(session.call("cat /tmp/got /tmp/done")) == \
        b"first part\ndone\n"


def test_a_request_left_half_read_closes_the_session(
    session: Session
) -> None:
    output = session.call("head -c 10000000 /dev/zero")
    next(output)
    output.close()

    assert not session.usable
    with pytest.raises(ContainerError, match="closed"):
        list(session.call("true"))


def test_a_reader_that_stops_just_short_of_the_end_keeps_the_session(
    docker_client: docker.DockerClient, container: str, session: Session
) -> None:
    # As a tar reader stops at the end-of-archive blocks, before the
    # padding that ends tar's last record.
    output = session.call("head -c 70000 /dev/zero; sleep 0.2")
    next(output)
    output.close()

    assert session.usable
    assert b"".join(session.call("echo next")) == b"next\n"
    assert perl_servers(docker_client, container) == 1


def test_a_reader_that_stops_while_the_script_goes_on_closes_the_session(
    session: Session
) -> None:
    output = session.call("echo first; sleep 30")
    next(output)

    started = time.monotonic()
    output.close()

    assert time.monotonic() - started < 3
    assert not session.usable


def test_a_pool_reuses_its_sessions_and_ends_them_when_closed(
    docker_client: docker.DockerClient, container: str
) -> None:
    pool = SessionPool(docker_client, lambda: container)
    for number in range(20):
        assert pool.run(f"echo {number}") == f"{number}\n".encode()
    assert perl_servers(docker_client, container) == 1

    pool.close()

    deadline = time.monotonic() + 10
    while perl_servers(docker_client, container) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert perl_servers(docker_client, container) == 0


def test_a_pool_revives_a_container_that_stopped(
    docker_client: docker.DockerClient, container: str
) -> None:
    revived: list[str] = []

    def revive() -> str:
        docker_client.api.start(container)
        revived.append(container)
        return container

    pool = SessionPool(docker_client, lambda: container, revive=revive)
    assert pool.run("echo before") == b"before\n"
    docker_client.api.kill(container)
    docker_client.api.wait(container)

    assert pool.run("echo after") == b"after\n"
    assert revived == [container]
    pool.close()
