"""``--notify URL``: POST a JSON summary when a run ends.

The summary holds counts, times, cost and how the run ended; never a key. A notification
that cannot be sent is one line on stderr, never a failed run. The URL itself is not
printed (webhook URLs often carry a secret in their path): only its scheme and host.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from paceline.errors import ConfigError

if TYPE_CHECKING:
    from paceline.engine import RunResult

__all__ = ["check_url", "notify", "run_summary"]

TIMEOUT = 5.0


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL; a :class:`ConfigError` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--notify needs an http:// or https:// URL, not {where(url)!r}")
    return url


def where(url: str) -> str:
    """The part of ``url`` fit to print: scheme and host, no path, query or password."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "(not a URL)"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def run_summary(job: str, result: RunResult, jobfile: str | None = None) -> dict[str, Any]:
    """What a notification says about a finished run."""
    s = result.snapshot
    return {
        "event": "run failed" if result.error is not None else "run finished",
        "error": result.error,
        "job": job,
        "jobfile": jobfile,
        "exit_code": result.exit_code,
        "stop_reason": result.stop_reason,
        "interrupted": result.interrupted,
        "total": s.total,
        "done": s.done,
        "failed": s.failed,
        "pending": s.pending + s.running,
        "skipped": s.skipped,
        "done_this_run": s.done_this_run,
        "failed_this_run": s.failed_this_run,
        "elapsed_seconds": round(s.elapsed, 1),
        "rate_avg": round(s.rate_avg, 2),
        "cost_usd": round(s.cost_total, 6),
        "store": result.store,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished_at": time.time(),
    }


def notify(url: str, summary: dict[str, Any], *, log: IO[str] | None = None) -> bool:
    """POST ``summary`` as JSON to ``url``; returns whether it was taken (a 2xx answer)."""
    log = log or sys.stderr
    try:
        r = httpx.post(url, json=summary, timeout=TIMEOUT, follow_redirects=False)
    except httpx.HTTPError as exc:
        print(f"[paceline] notify {where(url)} failed: {type(exc).__name__}", file=log, flush=True)
        return False
    if not r.is_success:
        print(f"[paceline] notify {where(url)} answered {r.status_code}", file=log, flush=True)
        return False
    return True
