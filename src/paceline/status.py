"""What a job's store says about it, for ``paceline status`` and ``--dry-run``.

Both read the store only (read-only, while a run may be writing it) and call nothing.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .clock import SYSTEM_CLOCK, Clock
from .errors import StoreError
from .keys import describe_state
from .limits import day_start
from .sources import Position
from .store import (
    KeyUsage,
    StoreReader,
    WorkerInfo,
    describe_target,
    open_store,
    store_exists,
)

if TYPE_CHECKING:
    from .job import Job

__all__ = ["DryRunReport", "dry_run", "job_status"]

StoreTarget = str | os.PathLike[str]


def job_status(
    job: Job, store: StoreTarget | None = None, clock: Clock = SYSTEM_CLOCK
) -> dict[str, Any]:
    """The job's numbers: the fields of ``status --json``. Reads the store only."""
    target = job.store_target(store)
    status: dict[str, Any] = {
        "job": job.name,
        "store": describe_target(target),
        "state": "not started",
        "total": 0,
        "done": 0,
        "failed": 0,
        "pending": 0,
        "running": 0,
        "retrying": 0,
        "skipped": 0,
        "duplicates": 0,
        "cost_usd": 0.0,
        "source_done": False,
        "keys": [],
        "run": None,
        "workers": [],
        "stop_requested": False,
        "circuit": None,
        "recent_failures": [],
    }
    now = clock.time()
    reader = _open_reader(job, target)
    if reader is None:
        if job.keys is not None:
            status["keys"] = _keys(job, [], lambda fp, start: {}, now)
        return status
    try:
        counts = reader.counts()
        live = reader.workers(now)
        last = live[0] if live else reader.last_run()
        duplicates, _ = reader.duplicates(0)
        failures = reader.recent_failures(5)
        source_done = reader.source_position()[1]
        status["cost_usd"] = round(reader.cost(), 6)
        status["keys"] = _keys(job, reader.key_usage(), reader.day_usage, now)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return status  # the first run is creating the store this very moment
        raise StoreError(f"cannot read store {status['store']}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read store {status['store']}: {exc}") from None
    finally:
        reader.close()
    in_flight = sum(int(w.stats.get("in_flight", 0)) for w in live)
    claimed = counts.get("running", 0)
    status.update(
        state=_state(bool(live), last.state if last else None),
        done=counts.get("done", 0),
        failed=counts.get("failed", 0),
        running=min(in_flight, claimed),
        retrying=counts.get("retry", 0),
        skipped=counts.get("skipped", 0),
        duplicates=duplicates,
        source_done=source_done,
    )
    status["pending"] = counts.get("pending", 0) + status["retrying"] + claimed - status["running"]
    status["total"] = sum(status[k] for k in ("done", "failed", "pending", "running", "skipped"))
    if last is not None:
        status["run"] = {
            "pid": last.pid,
            "host": last.host,
            "started_at": last.started_at,
            "heartbeat": last.heartbeat,
            "finished_at": last.finished_at,
            **{k: v for k, v in last.stats.items() if k != "pid"},
        }
        if len(live) > 1:  # the job's rates are the sum of its workers'
            for field in ("rate_now", "rate_avg", "in_flight"):
                status["run"][field] = round(sum(w.stats.get(field) or 0 for w in live), 2)
            rate = status["run"]["rate_now"] or status["run"]["rate_avg"]
            left = status["pending"] + status["running"]
            status["run"]["eta_seconds"] = round(left / rate, 1) if rate and source_done else None
    status["workers"] = [_worker_row(w) for w in live]
    # While the provider fails for everyone, the run pauses and probes (a circuit breaker).
    status["circuit"] = next((w.stats["circuit"] for w in live if w.stats.get("circuit")), None)
    status["stop_requested"] = any(w.stats.get("stopping") == "stop requested" for w in live)
    status["recent_failures"] = [{"id": i, "attempts": a, "error": e} for i, a, e in failures]
    return status


def _open_reader(job: Job, target: StoreTarget) -> StoreReader | None:
    """The store, read-only; ``None`` when the job has not run yet."""
    if not store_exists(target):
        return None
    try:
        return open_store(target, job.name, readonly=True)
    except StoreError as exc:
        if "has not run yet" in str(exc):
            return None
        raise


def _worker_row(w: WorkerInfo) -> dict[str, Any]:
    return {
        "worker": w.worker_id[:12],
        "host": w.host,
        "pid": w.pid,
        "started_at": w.started_at,
        "heartbeat": w.heartbeat,
        "done": w.stats.get("done_this_run", 0),
        "failed": w.stats.get("failed_this_run", 0),
        "in_flight": w.stats.get("in_flight", 0),
        "rate_now": w.stats.get("rate_now", 0.0),
        "rate_avg": w.stats.get("rate_avg", 0.0),
        "stopping": w.stats.get("stopping"),
    }


def _state(live: bool, last: str | None) -> str:
    if live:
        return "running"
    if last is None:
        return "not started"
    # A run recorded as running whose process is gone was killed (or its machine died).
    return "interrupted" if last in ("running", "dead") else last


def _keys(
    job: Job,
    stored: list[KeyUsage],
    day_usage: Callable[[str, float], dict[str, float]],
    now: float,
) -> list[dict[str, Any]]:
    """Each key as the store last saw it; today's quota from the daily usage table."""
    by_fp = {k.fingerprint: k for k in stored}
    rows = []
    pool_keys = job.keys.keys if job.keys is not None else []
    group_fp = {id(g): k.fingerprint for k, g in (job.keys.groups() if job.keys else [])}
    for key in pool_keys:
        seen = by_fp.pop(key.fingerprint, None)
        info = (seen.info if seen else None) or {}
        today = []
        for meter in key.group.day:
            start = day_start(now, meter.tz)
            used = day_usage(group_fp[id(key.group)], start).get(meter.limit.unit, 0.0)
            today.append(
                {"unit": meter.limit.unit, "used": round(used), "limit": meter.limit.count}
            )
        limits = info.get("limits") or [m.limit.describe() for m in key.group.meters()]
        rows.append(_row(key.masked, seen, limits, today, now))
    for seen in by_fp.values():  # keys used before but no longer in the pool
        rows.append(_row(seen.masked, seen, (seen.info or {}).get("limits", []), [], now))
    return rows


def _row(
    masked: str, seen: KeyUsage | None, limits: list[str], today: list[dict[str, Any]], now: float
) -> dict[str, Any]:
    until = seen.until if seen else None
    state = describe_state(seen.state if seen else "ready", until, now)
    if state == "ready":
        until = None
    return {
        "key": masked,
        "requests": seen.requests if seen else 0,
        "tokens": seen.tokens if seen else 0,
        "rate_limited": seen.rate_limited if seen else 0,
        "errors": seen.errors if seen else 0,
        "state": state,
        "until": until,
        "reason": seen.reason if seen and state != "ready" else None,
        "limits": limits,
        "today": today,
    }


@dataclass(slots=True)
class DryRunReport:
    """What a run would do, from reading the whole source against the store."""

    records: int = 0
    new: int = 0
    done: int = 0
    failed: int = 0
    waiting: int = 0
    invalid: int = 0
    duplicates: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dry_run(job: Job, store: StoreTarget | None = None) -> DryRunReport:
    """Read and validate the whole source; count new, already done and invalid records.

    Ids seen are kept in a temporary on-disk table, so memory stays flat for any size.
    """
    report = DryRunReport()
    reader = _open_reader(job, job.store_target(store))
    seen = sqlite3.connect("")  # a private temporary database on disk
    seen.execute("CREATE TABLE seen (id TEXT PRIMARY KEY)")
    try:
        records = job.source.read(Position())
        while chunk := list(itertools.islice(records, 2000)):
            valid = []
            for r in chunk:
                report.records += 1
                if r.error is not None:
                    report.invalid += 1
                    _example(report, f"line {r.line}: {r.error}")
                else:
                    valid.append(r)
            ids = [r.id for r in valid if r.id is not None]
            known = reader.statuses_of(ids) if reader is not None else {}
            for r in valid:
                assert r.id is not None
                if seen.execute("INSERT OR IGNORE INTO seen VALUES (?)", (r.id,)).rowcount == 0:
                    report.duplicates += 1
                    _example(report, f"line {r.line}: duplicate id {r.id!r}")
                    continue
                state = known.get(r.id)
                if state is None:
                    report.new += 1
                elif state == "done":
                    report.done += 1
                elif state == "failed":
                    report.failed += 1
                else:
                    report.waiting += 1
    finally:
        seen.close()
        if reader is not None:
            reader.close()
    return report


def _example(report: DryRunReport, text: str) -> None:
    if len(report.examples) < 10:
        report.examples.append(text)
