"""The ``paceline`` command's first lines: signals find a handler before anything loads.

The CLI imports a good deal (click, rich, httpx, the engine); a Ctrl+C or SIGTERM in those
first moments must still end in one line and exit code 130, not a traceback or a silent
kill. So this module installs the handlers first and imports the CLI after.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl+C: the CLI ends it in one line
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("paceline: error: interrupted", file=sys.stderr, flush=True)
        os._exit(130)
    cli_main()
