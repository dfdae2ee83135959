"""Whether a worker's process still lives (on this machine: another machine's pid means
nothing here).

A pid alone can lie: a killed run may linger as a zombie, its pid may have been given to
another process since, and a container restarted with the same host name starts its
process as pid 1 again. So a pid counts as the worker's only if the process is not a
zombie and started before the worker registered.
"""

from __future__ import annotations

import os
import time
from functools import cache

__all__ = ["worker_alive"]


def worker_alive(pid: int, registered_at: float) -> bool:
    """Whether the process ``pid`` can be the worker that registered at ``registered_at``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    stat = _stat(pid)
    if stat is None:
        return True  # no /proc here: the signal check is all there is
    state, started = stat
    if state in ("Z", "X"):
        return False  # a zombie: killed, not yet reaped
    if started is None or abs(time.time() - registered_at) > 86_400:
        return True  # no start time, or a registration on a test's fake clock
    return started <= registered_at + 1.0


def _stat(pid: int) -> tuple[str, float | None] | None:
    """The process's state letter and start time (epoch seconds), from ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    boot = _boot_time()
    try:
        ticks = int(fields[19])
    except (IndexError, ValueError):
        return fields[0] if fields else "?", None
    if boot is None:
        return fields[0], None
    return fields[0], boot + ticks / os.sysconf("SC_CLK_TCK")


@cache
def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
