"""`python -m tarpipe`: the command line, whose code is `runners.cli`.

This is the one file of `tarpipe` that points at `runners`, against the
arrow everywhere else.  The command line runs containers, so its code
belongs with the runners, while `tarpipe` stays pure and needs no
Docker; but `python -m tarpipe` is where a user looks for it.  The
import happens inside `main`, which only runs when this module is run
as a program: `import tarpipe` (even `import tarpipe.__main__`) loads
nothing of `runners` and nothing of the Docker SDK.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Hand the command line over to `runners.cli.main`."""
    from runners.cli import main as run_command_line

    return run_command_line()


if __name__ == "__main__":
    sys.exit(main())
