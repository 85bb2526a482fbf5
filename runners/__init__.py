"""Runners: tarpipe composed with the Docker SDK.

Three ways to run a kata's `cyber-dojo.sh` in a throw-away container,
each `run(kata_id, image, files, *, max_seconds=10) -> RunResult`:

- `TmpRunner`: only the visible files, all brand new; nothing is kept.
- `KatasVolumeRunner`: the kata's folder on the host, bind-mounted;
  build products stay from run to run.
- `KatasDataContainerRunner`: the kata in a Docker volume, every file
  tar-piped in and (if the run finished in time) back, atomically.
"""

from ._base import RunResult
from .container import ContainerLimits
from .errors import RunnerError
from .history import HistoryEntry
from .katas_data_container import KatasDataContainerRunner
from .katas_volume import KatasVolumeRunner
from .tmp import TmpRunner

__all__ = [
    "ContainerLimits",
    "HistoryEntry",
    "KatasDataContainerRunner",
    "KatasVolumeRunner",
    "RunResult",
    "RunnerError",
    "TmpRunner",
]
