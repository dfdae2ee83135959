"""What the commands do to a job's store, as plain functions: the CLI and the web API are
thin surfaces over these.

Every function takes the job (as loaded from its job file) and an optional store override
(``--store`` / ``PACELINE_STORE``); none needs the job's API keys.

>>> ops.retry(job)                          # doctest: +SKIP
RetryResult(put_back=12, invalid_left=1)
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigError, JobAlreadyRunning
from .store import FailedItem, Store, open_store, store_exists
from .store.records import StoredItem

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "Failures",
    "RetryResult",
    "error_kind",
    "expedite",
    "failures",
    "items",
    "requeue",
    "retry",
    "statuses",
    "stop",
]

StoreTarget = str | os.PathLike[str]
#: How long a worker may miss heartbeats before it counts as gone.
STALE_AFTER = 15.0


def _open(job: Job, store: StoreTarget | None) -> Store:
    target = job.store_target(store)
    if not store_exists(target):
        raise ConfigError(f"no store at {target}: the job has not run yet")
    return open_store(target, job.name)


@dataclass(frozen=True, slots=True)
class RetryResult:
    """``put_back`` items went back in line; ``invalid_left`` invalid source lines stay
    failed (fix them in the source, then retry with ``invalid=True``)."""

    put_back: int
    invalid_left: int


def retry(job: Job, store: StoreTarget | None = None, *, invalid: bool = False) -> RetryResult:
    """Put items that failed for good back in line with a fresh retry budget.

    With ``invalid``, failed source lines are forgotten too and the source is read again,
    so lines fixed since are taken. Refused while a worker runs the job.
    """
    db = _open(job, store)
    try:
        live = db.workers(SYSTEM_CLOCK.time())
        if live:
            w = live[0]
            raise JobAlreadyRunning(
                f"the job is running (pid {w.pid} on {w.host}): retry after it stops"
            )
        n = db.retry_failed(invalid=invalid)
        left = db.counts().get("failed", 0)
    finally:
        db.close()
    return RetryResult(n, left)


def expedite(
    job: Job, ids: Sequence[str], store: StoreTarget | None = None, *, again: bool = False
) -> dict[str, str]:
    """Put items first in line, also for a run going on in another process (it takes them
    within a second). Returns each known id's status before; failed or skipped items are
    put back; with ``again``, done items too (to be done once more)."""
    db = _open(job, store)
    try:
        now = SYSTEM_CLOCK.time()
        if again:
            before = db.requeue(list(ids), now)
            db.expedite(list(ids), now)
            return before
        return db.expedite(list(ids), now)
    finally:
        db.close()


def requeue(job: Job, ids: Sequence[str], store: StoreTarget | None = None) -> dict[str, str]:
    """Put items back in line to be done again (done ones included), with a fresh retry
    budget; returns each known id's status before."""
    db = _open(job, store)
    try:
        return db.requeue(list(ids), SYSTEM_CLOCK.time())
    finally:
        db.close()


def statuses(job: Job, ids: Sequence[str], store: StoreTarget | None = None) -> dict[str, str]:
    """The status of each of ``ids`` known to the store (read-only; unknown ids are left
    out)."""
    target = job.store_target(store)
    if not store_exists(target):
        return {}
    db = open_store(target, job.name, readonly=True)
    try:
        return db.statuses_of(list(ids))
    finally:
        db.close()


def stop(job: Job, store: StoreTarget | None = None, clock: Clock = SYSTEM_CLOCK) -> int:
    """Ask every live worker of the job to stop gracefully (they notice within about a
    second); returns how many were running."""
    db = _open(job, store)
    try:
        return db.request_stop(clock.time())
    finally:
        db.close()


_HTTP = re.compile(r"^HTTP (\d{3})\b")
_LINE = re.compile(r"^line \d+: ")
_EXCEPTION = re.compile(
    r"^([A-Za-z_][\w.]*(?:Error|Exception|Timeout|Exhausted|Retryable|Permanent)\w*)\b"
)


def error_kind(error: str) -> str:
    """The kind of a stored error, for grouping: ``HTTP 404``, ``ValueError``,
    ``invalid line: invalid JSON``, ``the sink refused the result``, ..."""
    text = error.strip()
    if _LINE.match(text):
        what = _LINE.sub("", text)
        return "invalid line: " + re.split(r"[:(]", what, maxsplit=1)[0].strip()
    if m := _HTTP.match(text):
        return f"HTTP {m.group(1)}"
    if m := _EXCEPTION.match(text):
        return m.group(1)
    head = re.split(r"[:(]", text, maxsplit=1)[0].strip()
    return head[:60] or "unknown"


@dataclass(slots=True)
class Failures:
    """Failed items (most recent first) and how many of each kind of error."""

    total: int = 0
    items: list[FailedItem] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


def failures(job: Job, store: StoreTarget | None = None, *, limit: int | None = None) -> Failures:
    """Every item failed for good, grouped by kind of error; ``limit`` bounds the items
    listed (the counts by kind always cover all)."""
    target = job.store_target(store)
    report = Failures()
    if not store_exists(target):
        return report
    db = open_store(target, job.name, readonly=True)
    try:
        for failed in db.failures():
            report.total += 1
            report.kinds[error_kind(failed.error)] += 1
            if limit is None or len(report.items) < limit:
                report.items.append(failed)
    finally:
        db.close()
    return report


def items(
    job: Job, store: StoreTarget | None = None, *, statuses: Sequence[str] = ()
) -> Iterator[StoredItem]:
    """Every item of the job (or those of ``statuses``) in source order, streamed."""
    target = job.store_target(store)
    if not store_exists(target):
        return
    db = open_store(target, job.name, readonly=True)
    try:
        yield from db.iter_items(statuses)
    finally:
        db.close()
