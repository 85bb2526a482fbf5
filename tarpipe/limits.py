"""How much an archive may hold before unpacking it stops with an error."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    """Bounds checked member by member while a stream is read.

    The defaults fit a coding kata with its build products (objects,
    executables, a few libraries) with room to spare, and stop a run that
    fills its sandbox on purpose long before it fills the host.
    """

    #: members of every kind, directories included
    max_members: int = 20_000
    #: declared size of one regular file
    max_file_bytes: int = 256 * MiB
    #: sum of the declared sizes of all regular files
    max_total_bytes: int = 1 * GiB
    #: a member's whole relative path, in bytes once encoded
    max_path_bytes: int = 4096
    #: one component of a path, in bytes (the usual NAME_MAX)
    max_name_bytes: int = 255
    #: bytes of one PAX extended header (names, mtimes, link targets)
    max_pax_header_bytes: int = 64 * KiB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"Limits.{name} must be a non-negative int, "
                                 f"not {value!r}")
