"""``paceline verify``: does the sink hold what the source and the store say it should?

Source ids, sink ids and store statuses are streamed into a private temporary database,
so the comparison takes constant memory for any number of items.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .sources import Position
from .store import open_store, store_exists

if TYPE_CHECKING:
    from .job import Job

__all__ = ["Verification", "verify"]


@dataclass(slots=True)
class Verification:
    """The comparison; ``ok`` when nothing is missing or extra."""

    source: int = 0
    invalid: int = 0
    sink: int = 0
    done: int = 0
    not_done: int = 0  # pending, failed or skipped in the store: not expected in the sink
    unprocessed: int = 0  # source items neither done, failed nor skipped (or never read)
    failed: int = 0
    missing: int = 0  # done in the store, absent from the sink
    extra: int = 0  # in the sink, not in the source
    duplicates_in_sink: int = 0
    checksum: str | None = None
    repaired: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.duplicates_in_sink or self.unprocessed)


def verify(
    job: Job,
    store: str | os.PathLike[str] | None = None,
    *,
    checksum: bool = False,
    repair: bool = False,
) -> Verification:
    """Compare source, store and sink. With ``repair``, done items whose row is missing
    from the sink are put back in line (the next run writes them)."""
    read_rows = getattr(job.sink, "read_rows", None)
    if read_rows is None:
        raise ConfigError(f"cannot verify {job.sink.describe()}: it cannot be read back")
    result = Verification()
    db = sqlite3.connect("")  # private temporary database on disk
    db.execute("CREATE TABLE src (id TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE snk (id TEXT)")
    db.execute("CREATE TABLE st (id TEXT PRIMARY KEY, status TEXT, wrote INTEGER)")
    try:
        records = job.source.read(Position())
        while chunk := list(itertools.islice(records, 5000)):
            ids = [(r.id,) for r in chunk if r.error is None and r.id is not None]
            result.invalid += len(chunk) - len(ids)
            db.executemany("INSERT OR IGNORE INTO src VALUES (?)", ids)
        rows = iter(read_rows())
        while batch := list(itertools.islice(rows, 5000)):
            db.executemany("INSERT INTO snk VALUES (?)", [(str(r.get("id")),) for r in batch])
        if checksum:
            result.checksum = _checksum(read_rows)
        target = job.store_target(store)
        if store_exists(target):
            reader = open_store(target, job.name, readonly=True)
            try:
                for batch in reader.iter_statuses(5000):
                    db.executemany("INSERT OR IGNORE INTO st VALUES (?, ?, ?)", batch)
            finally:
                reader.close()
        (result.source,) = db.execute("SELECT count(*) FROM src").fetchone()
        (result.sink,) = db.execute("SELECT count(DISTINCT id) FROM snk").fetchone()
        (result.duplicates_in_sink,) = db.execute(
            "SELECT count(*) - count(DISTINCT id) FROM snk"
        ).fetchone()
        db.execute("CREATE INDEX snk_id ON snk (id)")
        (result.done,) = db.execute("SELECT count(*) FROM st WHERE status='done'").fetchone()
        (result.not_done,) = db.execute(
            "SELECT count(*) FROM src WHERE id NOT IN (SELECT id FROM st WHERE status='done')"
        ).fetchone()
        # A done item whose task returned None wrote nothing, by design: not missing.
        missing = "FROM st WHERE status='done' AND wrote AND id NOT IN (SELECT id FROM snk)"
        extra = "FROM (SELECT DISTINCT id FROM snk) WHERE id NOT IN (SELECT id FROM src)"
        (result.missing,) = db.execute(f"SELECT count(*) {missing}").fetchone()
        finished = "SELECT id FROM st WHERE status IN ('done', 'failed', 'skipped')"
        unprocessed = f"FROM src WHERE id NOT IN ({finished})"
        (result.unprocessed,) = db.execute(f"SELECT count(*) {unprocessed}").fetchone()
        (result.failed,) = db.execute("SELECT count(*) FROM st WHERE status='failed'").fetchone()
        (result.extra,) = db.execute(f"SELECT count(*) {extra}").fetchone()
        result.examples = {
            "missing": [r[0] for r in db.execute(f"SELECT id {missing} LIMIT 10")],
            "extra": [r[0] for r in db.execute(f"SELECT id {extra} LIMIT 10")],
            "unprocessed": [r[0] for r in db.execute(f"SELECT id {unprocessed} LIMIT 10")],
        }
        if repair and result.missing:
            result.repaired = _repair(job, store, db, missing)
    finally:
        db.close()
    return result


def _repair(
    job: Job, store: str | os.PathLike[str] | None, db: sqlite3.Connection, missing: str
) -> int:
    """Put the done items missing from the sink back in line, in batches."""
    from .ops import requeue

    cursor = db.execute(f"SELECT id {missing}")
    put_back = 0
    while batch := [r[0] for r in cursor.fetchmany(5000)]:
        before = requeue(job, batch, store)
        put_back += sum(1 for s in before.values() if s == "done")
    return put_back


def _checksum(read_rows: Any) -> str:
    """SHA-256 over the rows in id order, each as canonical JSON: equal sinks, equal sums.

    Rows are sorted through a temporary database, so memory stays flat.
    """
    db = sqlite3.connect("")
    db.execute("CREATE TABLE r (id TEXT, body TEXT)")
    try:
        rows = iter(read_rows())
        while batch := list(itertools.islice(rows, 5000)):
            db.executemany(
                "INSERT INTO r VALUES (?, ?)",
                [(str(r.get("id")), json.dumps(r, sort_keys=True, default=str)) for r in batch],
            )
        digest = hashlib.sha256()
        for (body,) in db.execute("SELECT body FROM r ORDER BY id, body"):
            digest.update(body.encode() + b"\n")
        return digest.hexdigest()
    finally:
        db.close()
