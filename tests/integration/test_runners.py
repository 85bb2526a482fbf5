"""The three runners against the real engine: step 3 of the design note.

The C kata in examples/c-kata has 40 modules and a makefile; `make`
prints every compiler command it runs, so the output of a run says
exactly which objects were rebuilt.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import tarfile
import time
import zlib
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
from docker.models.containers import Container

from runners import (
    KatasDataContainerRunner,
    KatasVolumeRunner,
    RunResult,
    TmpRunner,
    katas_data_container,
)
from runners.errors import BadRequestError, ImageNotFoundError, RunnerError
from runners.images import BUSYBOX, GCC
from tarpipe import NOBODY, Owner, TarStream, UnsafeMemberError, pack_files
from tests.conftest import remove_katas_volume

pytestmark = pytest.mark.docker

KATA = Path(__file__).parents[2] / "examples" / "c-kata"
OUTSIDE = Owner(4321, 4321, "cyber-dojo", "cyber-dojo")
COMPILED = re.compile(r"-c (\S+)\.c -o")


def kata_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(KATA.iterdir())}


def compiled(result: RunResult) -> list[str]:
    return sorted(COMPILED.findall(result.stdout))


def edited(files: dict[str, bytes], name: str) -> dict[str, bytes]:
    changed = dict(files)
    # A new function, so the object (not only the source) differs.
    changed[name] = files[name] + b"\nint edited(void) { return 7; }\n"
    assert changed[name] != files[name]
    return changed


@pytest.fixture
def kata_id(request: pytest.FixtureRequest) -> str:
    return f"t{os.getpid()}-{request.node.name[:30]}".replace("[", "-").strip("]")


@pytest.fixture
def volume_runner(docker_client: docker.DockerClient,
                  tmp_path: Path) -> Iterator[KatasVolumeRunner]:
    with KatasVolumeRunner(tmp_path / "katas", docker_client,
                           owner=OUTSIDE) as runner:
        yield runner


@pytest.fixture(scope="module")
def katas_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A volume of this test process; it and its data container go after."""
    name = f"tarpipe-test-{os.getpid()}"
    yield name
    remove_katas_volume(docker_client, name)


@pytest.fixture
def data_runner(docker_client: docker.DockerClient, katas_volume: str
                ) -> Iterator[KatasDataContainerRunner]:
    with KatasDataContainerRunner(katas_volume, docker_client,
                                  owner=OUTSIDE) as runner:
        yield runner


@pytest.fixture(params=["katas-volume", "katas-data-container"])
def katas_runner(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(
        "volume_runner" if request.param == "katas-volume" else "data_runner")


def test_incremental_builds_survive_from_run_to_run(
    katas_runner: Any, kata_id: str
) -> None:
    files = kata_files()
    full = katas_runner.run(kata_id, GCC, files)
    assert full.status == 0, full.stderr
    assert len(compiled(full)) == 41
    assert "total 820, expected 820" in full.stdout

    again = katas_runner.run(kata_id, GCC, files)
    assert again.status == 0, again.stderr
    assert compiled(again) == []

    one = katas_runner.run(kata_id, GCC, edited(files, "step07.c"))
    assert one.status == 0, one.stderr
    assert compiled(one) == ["step07"]
    assert set(one.changed) == {"step07.o", "hiker"}


def test_a_source_edited_in_the_second_its_object_was_built_is_rebuilt(
    katas_runner: Any, kata_id: str
) -> None:
    files = kata_files()
    assert katas_runner.run(kata_id, GCC, files).status == 0
    built = katas_runner.snapshot(kata_id)["step11.o"].mtime_ns
    # The edit is stamped one nanosecond after the object: the same second,
    # so only an exact mtime tells make that the object is out of date.
    katas_runner.clock = lambda: built + 1
    assert built // 10**9 == (built + 1) // 10**9

    result = katas_runner.run(kata_id, GCC, edited(files, "step11.c"))
    assert result.status == 0, result.stderr
    assert compiled(result) == ["step11"]


# GNU find: kind, path, mtime (seconds.fraction), permission bits.
LISTING = ("find . -mindepth 1 ! -name cyber-dojo.sh "
           "-printf '%y %P %T@ %m\\n' | sort > /tmp/listing; "
           "echo ---; cat /tmp/listing")


def listed(result: RunResult) -> dict[str, tuple[str, int, int]]:
    """The tree a run listed with LISTING: path -> (kind, mtime_ns, mode)."""
    assert result.status == 0, result
    found = {}
    for line in result.stdout.split("---\n", 1)[1].splitlines():
        kind, path, mtime, mode = line.split(" ")
        seconds, _, fraction = mtime.partition(".")
        mtime_ns = int(seconds) * 10**9 + int(fraction.ljust(9, "0")[:9])
        found[path] = ("directory" if kind == "d" else "file", mtime_ns,
                       int(mode, 8))
    return found


def snapshot_listing(runner: Any, kata_id: str
                     ) -> dict[str, tuple[str, int, int]]:
    return {name: (state.kind, state.mtime_ns, state.mode)
            for name, state in runner.snapshot(kata_id).items()
            if name != "cyber-dojo.sh"}


def test_every_file_and_folder_comes_back_as_the_run_left_it(
    katas_runner: Any, kata_id: str
) -> None:
    first = ("mkdir -p lib/a lib/b was-dir old-dir; echo 1 > lib/a/one.c; "
             "echo 2 > lib/b/two.c; echo 3 > was-file; echo x > was-dir/x; "
             "echo g > old-dir/gone; echo k > kept.o; echo t > touched.o; "
             "echo e > edited.o; echo d > deleted.o; chmod 700 lib/b; ")
    second = ("rm -r was-dir old-dir deleted.o was-file; echo now > was-dir; "
              "mkdir -p was-file/inner; echo i > was-file/inner/i; "
              "sleep 0.01; touch touched.o; echo E > edited.o; "
              "echo 3 > lib/a/three.c; chmod 640 lib/a/one.c; ")

    for script in (first, second, ""):
        files = {"cyber-dojo.sh": script + LISTING}
        result = katas_runner.run(kata_id, GCC, files, max_seconds=20)
        assert snapshot_listing(katas_runner, kata_id) == listed(result)

    after = snapshot_listing(katas_runner, kata_id)
    assert {"kept.o", "lib/a/three.c", "was-dir", "was-file/inner/i"} \
        <= after.keys()
    assert not {"deleted.o", "old-dir", "was-dir/x"} & after.keys()
    assert after["was-dir"][0] == "file" and after["was-file"][0] == "directory"
    assert after["lib/a/one.c"][2] == 0o640


def test_data_container_runs_start_no_exec_once_a_session_is_open(
    docker_client: docker.DockerClient,
    data_runner: KatasDataContainerRunner, kata_id: str
) -> None:
    files = kata_files()
    data_runner.run(kata_id, GCC, files)
    data = f"{data_runner.volume}-data"
    before = set(docker_client.api.inspect_container(data)["ExecIDs"] or [])

    for number in range(3):
        files = {**files, "step01.c": files["step01.c"] + b"\n" * number}
        assert data_runner.run(kata_id, GCC, files).status == 0

    after = set(docker_client.api.inspect_container(data)["ExecIDs"] or [])
    assert after - before == set()


def test_the_data_container_has_no_network_but_loopback(
    docker_client: docker.DockerClient,
    data_runner: KatasDataContainerRunner, kata_id: str
) -> None:
    data_runner.run(kata_id, BUSYBOX, {"cyber-dojo.sh": "true"})
    data = docker_client.containers.get(f"{data_runner.volume}-data")

    interfaces = data.exec_run(["ls", "/sys/class/net"]).output

    assert interfaces == b"lo\n"
    assert data.attrs["Config"]["NetworkDisabled"] is True
    assert not data.attrs["NetworkSettings"]["Networks"]


def test_a_timed_out_run_leaves_the_data_container_kata_as_it_was(
    data_runner: KatasDataContainerRunner, kata_id: str
) -> None:
    files = kata_files()
    assert data_runner.run(kata_id, GCC, files).status == 0
    before = data_runner.snapshot(kata_id)

    hostile = dict(edited(files, "step03.c"))
    hostile["cyber-dojo.sh"] = (b"make >/dev/null; echo junk > new.txt; "
                                b"rm -f step05.o; echo x >> hiker.c; sleep 60\n")
    result = data_runner.run(kata_id, GCC, hostile, max_seconds=2)
    assert result.timed_out

    after = data_runner.snapshot(kata_id)
    written = {"step03.c", "cyber-dojo.sh"}
    assert {p: s for p, s in after.items() if p not in written} == \
        {p: s for p, s in before.items() if p not in written}
    assert after.keys() == before.keys()
    assert after["step03.c"].digest != before["step03.c"].digest


def test_a_timed_out_run_leaves_what_it_wrote_in_a_volume_kata(
    volume_runner: KatasVolumeRunner, kata_id: str
) -> None:
    script = b"echo partial > half-done.txt; sleep 60\n"
    result = volume_runner.run(kata_id, BUSYBOX, {"cyber-dojo.sh": script},
                               max_seconds=1)
    assert result.timed_out
    # The documented weakness of running in place: nothing is undone.
    assert "half-done.txt" in volume_runner.snapshot(kata_id)


def test_tmp_runner_has_only_the_visible_files_all_brand_new(
    docker_client: docker.DockerClient, kata_id: str
) -> None:
    files = {"cyber-dojo.sh": b"find . -print | sort; stat -c '%Y %n' *\n",
             "notes.txt": b"hello\n", "src/a.c": b"int a;\n"}
    started = time.time()
    with TmpRunner(docker_client) as runner:
        result = runner.run(kata_id, BUSYBOX, files)

    assert result.status == 0, result.stderr
    listing, stamps = result.stdout.split("\n", 5)[:5], result.stdout
    assert listing == [".", "./cyber-dojo.sh", "./notes.txt", "./src",
                       "./src/a.c"]
    for line in stamps.splitlines()[5:]:
        seconds, name = line.split(" ", 1)
        assert int(seconds) >= int(started), name


def test_files_are_nobody_inside_and_the_outside_owner_outside(
    katas_runner: Any, kata_id: str
) -> None:
    script = b"stat -c '%u:%g %n' *; echo made > made.txt\n"
    result = katas_runner.run(kata_id, BUSYBOX, {"cyber-dojo.sh": script})
    assert result.status == 0, result.stderr
    assert result.stdout.splitlines() == [f"{NOBODY.uid}:{NOBODY.gid} cyber-dojo.sh"]
    assert result.created == ("made.txt",)
    owners = outside_owners(katas_runner, kata_id)
    assert set(owners) == {"cyber-dojo.sh", "made.txt"}
    if os.geteuid() == 0 or isinstance(katas_runner, KatasDataContainerRunner):
        assert set(owners.values()) == {f"{OUTSIDE.uid}:{OUTSIDE.gid}"}


def outside_owners(runner: Any, kata_id: str) -> dict[str, str]:
    """Each sandbox file's "uid:gid" as seen from outside the run."""
    if isinstance(runner, KatasVolumeRunner):
        sandbox = runner.katas_root / kata_id / "sandbox"
        return {str(p.relative_to(sandbox)):
                f"{p.lstat().st_uid}:{p.lstat().st_gid}"
                for p in sandbox.rglob("*")}
    data = runner.client.containers.get(f"{runner.volume}-data")
    listing = data.exec_run(
        ["find", f"/katas/{kata_id}/sandbox/", "-mindepth", "1",
         "-printf", "%U:%G %P\\n"]).output.decode()
    return {name: ids for ids, name in
            (line.split(" ", 1) for line in listing.splitlines())}


def test_history_has_one_commit_per_run_with_exactly_its_visible_files(
    katas_runner: Any, kata_id: str
) -> None:
    runs = [
        {"cyber-dojo.sh": b"echo one\n", "a.txt": b"1"},
        {"cyber-dojo.sh": b"echo two\n", "a.txt": b"2", "b.txt": b"b"},
        {"cyber-dojo.sh": b"sleep 30\n", "b.txt": b"b"},
    ]
    for files in runs:
        katas_runner.run(kata_id, BUSYBOX, files, max_seconds=1)

    history = katas_runner.history(kata_id)
    assert [dict(entry.files) for entry in history] == runs
    assert history[2].message.startswith("timed out")
    assert history[0].message.startswith("exit status 0")


@pytest.mark.parametrize("kata_id, files, max_seconds, error", [
    ("../up", {"cyber-dojo.sh": ""}, 10, BadRequestError),
    ("ok", {"cyber-dojo.sh": "", "../x": ""}, 10, UnsafeMemberError),
    ("ok", {"cyber-dojo.sh": "", "/etc/x": ""}, 10, UnsafeMemberError),
    ("ok", {"main.c": ""}, 10, BadRequestError),
    ("ok", {"cyber-dojo.sh": ""}, 0, BadRequestError),
    ("ok", {"cyber-dojo.sh": ""}, -1, BadRequestError),
])
def test_bad_requests_are_refused_before_any_container_starts(
    docker_client: docker.DockerClient, tmp_path: Path, kata_id: str,
    files: dict[str, str], max_seconds: float, error: type[Exception],
) -> None:
    with TmpRunner(docker_client) as runner, pytest.raises(error):
        runner.run(kata_id, BUSYBOX, files, max_seconds=max_seconds)
    with KatasVolumeRunner(tmp_path, docker_client) as runner, \
            pytest.raises(error):
        runner.run(kata_id, BUSYBOX, files, max_seconds=max_seconds)
    assert not (tmp_path / kata_id).exists()


def test_a_missing_image_is_named_in_the_error(
    docker_client: docker.DockerClient,
) -> None:
    with TmpRunner(docker_client) as runner, \
            pytest.raises(ImageNotFoundError, match="no-such/image:0"):
        runner.run("k", "no-such/image:0", {"cyber-dojo.sh": ""})


def test_a_missing_image_leaves_a_kata_as_it_was(
    katas_runner: Any, kata_id: str
) -> None:
    files = {"cyber-dojo.sh": "echo one > out\n"}
    assert katas_runner.run(kata_id, BUSYBOX, files).status == 0
    before = katas_runner.snapshot(kata_id)

    with pytest.raises(ImageNotFoundError, match="no-such/image:0"):
        katas_runner.run(kata_id, "no-such/image:0",
                         {"cyber-dojo.sh": "echo two > out\n"})

    assert katas_runner.snapshot(kata_id) == before
    assert len(katas_runner.history(kata_id)) == 1


def test_runs_of_one_kata_take_turns_and_other_katas_run_meanwhile(
    katas_runner: Any, kata_id: str
) -> None:
    """Each run notes when it started and ended: one kata's never overlap."""
    script = (b"date +%s.%N > started; sleep 1; date +%s.%N > ended; "
              b"cat started ended\n")
    files = {"cyber-dojo.sh": script}
    jobs = [(kata_id, files), (kata_id, files), (kata_id + "-other", files)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(
            lambda job: katas_runner.run(job[0], GCC, job[1]), jobs))

    spans = [tuple(map(float, r.stdout.split())) for r in results]
    assert all(r.status == 0 for r in results), [r.stderr for r in results]
    first, second, other = spans
    assert first[1] <= second[0] or second[1] <= first[0], spans
    assert other[0] < max(first[1], second[1]), spans


@pytest.mark.parametrize("refusals", [1, 100])
def test_a_data_container_the_engine_will_not_start_is_made_again(
    docker_client: docker.DockerClient, katas_volume: str, kata_id: str,
    monkeypatch: pytest.MonkeyPatch, refusals: int,
) -> None:
    """Refused once, it is made again; refused every time, a runner
    error (and the next run, once the engine starts it, works)."""
    kata_id = f"{kata_id}-{refusals}"  # the volume is the module's
    files = {"cyber-dojo.sh": "echo $(cat count 2>/dev/null)x > count; "
                              "cat count\n"}
    name = f"{katas_volume}-data"
    with KatasDataContainerRunner(katas_volume, docker_client) as runner:
        assert runner.run(kata_id, BUSYBOX, files).stdout == "x\n"
    first = docker_client.containers.get(name)
    first.stop(timeout=0)

    start = Container.start
    refused: list[str] = []

    def refusing(self: Container, **kwargs: Any) -> None:
        if self.attrs.get("Name") != f"/{name}" or len(refused) == refusals:
            return start(self, **kwargs)
        refused.append(str(self.id))
        # What an engine that died while starting it answers after.
        response = requests.Response()
        response.status_code = 500
        raise docker.errors.APIError(
            "failed to start shim: mkdir ...: file exists",
            response=response)

    with KatasDataContainerRunner(katas_volume, docker_client) as runner:
        with monkeypatch.context() as patched:
            patched.setattr(Container, "start", refusing)
            if refusals == 1:  # made again at once
                assert runner.run(kata_id, BUSYBOX, files).stdout == "xx\n"
            else:
                with pytest.raises(RunnerError, match="start data container"):
                    runner.run(kata_id, BUSYBOX, files)
        assert runner.run(kata_id, BUSYBOX, files).stdout.startswith("xx")
    assert docker_client.containers.get(name).id != first.id
    assert refused[0] == first.id


def test_a_commit_cut_inside_an_object_leaves_no_part_of_it(
    docker_client: docker.DockerClient, katas_volume: str, kata_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As when the runner is killed while the history's objects go by."""
    files = {"cyber-dojo.sh": "echo one\n", "hiker.c": "int a = 1;\n"}
    with KatasDataContainerRunner(katas_volume, docker_client) as runner:
        assert runner.run(kata_id, BUSYBOX, files).stdout == "one\n"
        before = runner.history(kata_id)

    def cut(members: dict[str, bytes], **kwargs: Any) -> TarStream:
        whole = b"".join(pack_files(members, **kwargs))
        if not any("git/objects/" in name for name in members):
            return TarStream(_chunks([whole[:-1024]]))
        with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
            biggest = max((member for member in archive
                           if "git/objects/" in member.name), key=_size)

        def members_then_a_kill() -> Generator[bytes, None, None]:
            # Sent in frames of 256 KiB: the first has the object's header
            # and some of its data, which tar writes out before the kill.
            yield whole[:biggest.offset_data + biggest.size // 2]
            time.sleep(0.5)
            raise KeyboardInterrupt

        return TarStream(members_then_a_kill())

    # About 700 KB as a git object: hex packs to about half.
    big = {**files, "big.txt": secrets.token_hex(700 * 1024)}
    with KatasDataContainerRunner(katas_volume, docker_client) as runner, \
            monkeypatch.context() as patched, \
            pytest.raises(KeyboardInterrupt):
        patched.setattr(katas_data_container, "pack_files", cut)
        runner.run(kata_id, BUSYBOX, big)

    assert _broken_objects(docker_client, katas_volume, kata_id) == []
    with KatasDataContainerRunner(katas_volume, docker_client) as runner:
        assert runner.history(kata_id) == before
        assert runner.run(kata_id, BUSYBOX, files).stdout == "one\n"
        assert len(runner.history(kata_id)) == 2


def _size(member: tarfile.TarInfo) -> int:
    return member.size


def _broken_objects(client: docker.DockerClient, volume: str,
                    kata_id: str) -> list[str]:
    """The kata's loose objects whose zlib stream does not end whole."""
    data = client.containers.get(f"{volume}-data")
    chunks, _ = data.get_archive(f"/katas/{kata_id}/git/objects")
    broken = []
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
        for member in archive:
            if not member.isfile():
                continue
            packed = archive.extractfile(member)
            assert packed is not None
            unzip = zlib.decompressobj()
            with contextlib.suppress(zlib.error):
                unzip.decompress(packed.read())
            if not unzip.eof:
                broken.append(member.name)
    return broken


def _chunks(chunks: list[bytes]) -> Generator[bytes, None, None]:
    yield from chunks
