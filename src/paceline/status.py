"""What a job's store says about it, for ``paceline status`` and ``--dry-run``.

Both read the store only (read-only, while a run may be writing it) and call nothing.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import SYSTEM_CLOCK, Clock
from .errors import StoreError
from .keys import describe_state
from .limits import day_start
from .sources import Position
from .store import KeyUsage, SQLiteStore

if TYPE_CHECKING:
    from .job import Job

__all__ = ["DryRunReport", "dry_run", "job_status"]


def job_status(job: Job, store_path: Path, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """The job's numbers: the fields of ``status --json``."""
    status: dict[str, Any] = {
        "job": job.name,
        "store": str(store_path),
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
        "recent_failures": [],
    }
    now = clock.time()
    if not store_path.exists():
        if job.keys is not None:
            status["keys"] = _keys(job, [], lambda fp, start: {}, now)
        return status
    try:
        store = SQLiteStore(store_path, readonly=True)
        try:
            counts = store.counts()
            live = store.live_run(clock.time())
            last = live or store.last_run()
            duplicates, _ = store.duplicates(0)
            failures = store.recent_failures(5)
            source_done = store.source_position()[1]
            status["cost_usd"] = round(store.cost(), 6)
            status["keys"] = _keys(job, store.key_usage(), store.day_usage, now)
        finally:
            store.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return status  # the first run is creating the store this very moment
        raise StoreError(f"cannot read store {store_path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read store {store_path}: {exc}") from None
    in_flight = int(live.stats.get("in_flight", 0)) if live else 0
    claimed = counts.get("running", 0)
    status.update(
        state=_state(live is not None, last.state if last else None),
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
    status["recent_failures"] = [{"id": i, "attempts": a, "error": e} for i, a, e in failures]
    return status


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


def dry_run(job: Job, store_path: Path) -> DryRunReport:
    """Read and validate the whole source; count new, already done and invalid records.

    Ids seen are kept in a temporary on-disk table, so memory stays flat for any size.
    """
    report = DryRunReport()
    store = SQLiteStore(store_path, readonly=True) if store_path.exists() else None
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
            known = store.statuses_of(ids) if store is not None else {}
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
        if store is not None:
            store.close()
    return report


def _example(report: DryRunReport, text: str) -> None:
    if len(report.examples) < 10:
        report.examples.append(text)
