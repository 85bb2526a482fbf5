"""The public surface is exactly what is documented, and typed."""

from __future__ import annotations

from pathlib import Path

import tarpipe
from tarpipe import errors

EXPECTED = {
    "NOBODY", "ArchiveError", "FileDiff", "FileState", "LimitExceededError",
    "Limits", "Owner", "StreamConsumedError", "SwapError", "TarPipeError",
    "UnsafeMemberError", "diff", "pack_dir", "pack_directories", "pack_files",
    "retar",
    "unpack_into", "TarStream", "concat",
}


def test_tarpipe_exports_exactly_its_public_names() -> None:
    assert set(tarpipe.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(tarpipe, name) is not None


def test_every_error_derives_from_the_one_base() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.TarPipeError)


def test_the_package_says_it_is_typed() -> None:
    assert (Path(tarpipe.__file__).parent / "py.typed").is_file()


def test_tarpipe_imports_neither_docker_nor_subprocess() -> None:
    sources = Path(tarpipe.__file__).parent.glob("*.py")
    for source in sources:
        text = source.read_text()
        for banned in ("import docker", "from docker", "subprocess",
                       "os.system", "os.popen"):
            assert banned not in text, f"{source.name} uses {banned}"
