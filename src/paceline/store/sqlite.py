"""The SQLite store: durable state of one job's items, runs, source position and keys.

The zero-setup default: one file per job, one worker at a time (a second ``paceline run``
on the same file is refused while the first lives). Methods are synchronous and meant to
be called from one thread at a time (the engine's store thread); other processes may read
the same file at once, which WAL mode allows. Every status change also moves the
``counts`` table in the same transaction, so status never scans the items.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from paceline.errors import JobAlreadyRunning, StoreError
from paceline.item import Item, Status
from paceline.sources import Position, Record

from ._process import worker_alive
from .protocol import Budget, RowWriter
from .records import (
    EXPEDITED,
    Control,
    FailedItem,
    IngestResult,
    KeyUsage,
    Outcome,
    StoredItem,
    WorkerInfo,
    invalid_id,
)

__all__ = ["SQLiteStore"]

SCHEMA_VERSION = "1"
_RUN_COLUMNS = "run_id, pid, host, started_at, heartbeat, finished_at, state, stats"


class SQLiteStore:
    """A job's durable state in one SQLite file (WAL mode)."""

    shared = False

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"no store at {self.path}: the job has not run yet")
                uri = f"file:{self.path}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(
                    self.path, timeout=30, check_same_thread=False, isolation_level=None
                )
                self.db.execute("PRAGMA journal_mode=WAL")
                # Claims, ingest and heartbeats commit without waiting for the disk: lost
                # to a power cut, they are redone, and WAL keeps the file whole. A commit
                # of results (``complete``) waits for the disk: it is the checkpoint.
                self.db.execute("PRAGMA synchronous=NORMAL")
                # Freed space is zeroed: a done item's record does not linger in the file.
                self.db.execute("PRAGMA secure_delete=ON")
                schema = resources.files(__package__).joinpath("sql/sqlite.sql").read_text()
                self.db.executescript(schema)
                columns = {r[1] for r in self.db.execute("PRAGMA table_info(items)")}
                if "src_offset" not in columns:  # a store made before the column was
                    self.db.execute("ALTER TABLE items ADD COLUMN src_offset INTEGER")
            self.db.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc.strerror or exc}") from None

    @property
    def target(self) -> str:
        return str(self.path)

    def close(self) -> None:
        if not self.readonly:
            # Fold the write-ahead log into the file and empty it: pages with dropped
            # records do not stay behind in it.
            # (a reader holding it makes this fail: it is folded in on the next close)
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()

    def shares_database(self, sink: object) -> bool:
        return False  # a SQLite sink in its own file: sink first, then the statuses

    # -- job and workers ---------------------------------------------------------------

    def bind_job(self, name: str) -> None:
        """Tie the store to one job name; refuse a store that belongs to another job."""
        row = self.db.execute("SELECT value FROM meta WHERE key='job'").fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('job', ?), ('schema', ?)",
                (name, SCHEMA_VERSION),
            )
        elif row[0] != name:
            raise StoreError(f"store {self.path} belongs to job {row[0]!r}, not {name!r}")

    def register_worker(self, worker_id: str, now: float, stale_after: float) -> WorkerInfo:
        """Record a new run, unless another live run holds the job."""
        host, pid = socket.gethostname(), os.getpid()
        with _transaction(self.db):
            for other in self._live_runs(now, stale_after):
                if other.host == host and not worker_alive(other.pid, other.started_at):
                    continue
                raise JobAlreadyRunning(
                    f"this job is already running (pid {other.pid} on {other.host}, "
                    f"store {self.path}); stop it first or wait for it to finish"
                )
            self.db.execute(
                "UPDATE runs SET state='dead', finished_at=? WHERE finished_at IS NULL", (now,)
            )
            self.db.execute(
                "INSERT INTO runs (run_id, pid, host, started_at, heartbeat, state) "
                "VALUES (?, ?, ?, ?, ?, 'running')",
                (worker_id, pid, host, now, now),
            )
        return WorkerInfo(worker_id, worker_id, pid, host, now, now, None, "running", {})

    def _live_runs(self, now: float, stale_after: float) -> list[WorkerInfo]:
        """Unfinished runs that may still be alive: on this host, while their process
        lives (a busy run may miss heartbeats); elsewhere, while they heartbeat."""
        rows = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE finished_at IS NULL"
        ).fetchall()
        host = socket.gethostname()
        runs = [_run(r) for r in rows]
        return [
            r for r in runs
            if (r.host == host and worker_alive(r.pid, r.started_at))
            or r.heartbeat > now - stale_after
        ]  # fmt: skip

    def workers(self, now: float, *, live_only: bool = True) -> list[WorkerInfo]:
        if not live_only:
            rows = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY started_at DESC")
            return [_run(r) for r in rows]
        host = socket.gethostname()
        return [
            run
            for run in self._live_runs(now, 15.0)
            if not (run.host == host and not worker_alive(run.pid, run.started_at))
        ]

    def live_run(self, now: float, stale_after: float = 15.0) -> WorkerInfo | None:
        """The run holding the job now, if any (a reader's view: pid checks included)."""
        host = socket.gethostname()
        for run in self._live_runs(now, stale_after):
            if run.host == host and not worker_alive(run.pid, run.started_at):
                continue
            return run
        return None

    def last_run(self) -> WorkerInfo | None:
        row = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _run(row)

    def heartbeat(self, worker_id: str, now: float, stats: dict[str, Any]) -> Control:
        self.db.execute(
            "UPDATE runs SET heartbeat=?, stats=? WHERE run_id=?",
            (now, json.dumps(stats), worker_id),
        )
        row = self.db.execute(
            "SELECT r.started_at, r.finished_at, m.value FROM runs r "
            "LEFT JOIN meta m ON m.key = 'stop_requested_at' WHERE r.run_id=?",
            (worker_id,),
        ).fetchone()
        if row is None:
            return Control(lost=True)
        started, finished, stop_at = row
        stop = stop_at is not None and float(stop_at) >= started
        return Control(stop_requested=stop, lost=finished is not None)

    def finish_worker(self, worker_id: str, now: float, state: str, stats: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE runs SET heartbeat=?, finished_at=?, state=?, stats=? WHERE run_id=?",
            (now, now, state, json.dumps(stats), worker_id),
        )

    def request_stop(self, now: float) -> int:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('stop_requested_at', ?) "
            "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            (repr(now),),
        )
        return len(self.workers(now))

    # -- source ------------------------------------------------------------------------

    def lock_source(self, worker_id: str) -> bool:
        return True  # one worker holds the whole store

    def unlock_source(self) -> None:
        return None

    def source_position(self) -> tuple[Position, bool]:
        row = self.db.execute('SELECT "offset", line, exhausted FROM source_state').fetchone()
        if row is None:
            return Position(), False
        return Position(row[0], row[1]), bool(row[2])

    def ingest(
        self,
        records: Sequence[Record],
        after: Position,
        exhausted: bool,
        now: float,
        *,
        take: int = 0,
        worker_id: str = "",
        budgets: Sequence[Budget] = (),
    ) -> IngestResult:
        """Insert a chunk of source records and the position after them, atomically;
        the first ``take`` new items go in claimed for ``worker_id`` (no claim to run
        afterwards, and their records need not be read back)."""
        valid = [r for r in records if r.error is None]
        invalid = [r for r in records if r.error is not None]
        db = self.db
        with _transaction(db):
            take = self._room(take, budgets) if take > 0 else 0
            wanted = [r for r in valid if not r.skip]
            groups = {
                "running": wanted[:take],
                "pending": wanted[take:],
                "skipped": [r for r in valid if r.skip],
            }
            counted = {}
            first_seq = 0
            for status, group in groups.items():
                if status == "running" and group:
                    row = db.execute("SELECT coalesce(max(seq), 0) FROM items").fetchone()
                    first_seq = row[0]
                before = db.total_changes
                db.executemany(
                    "INSERT INTO items (id, data, status, priority, line, updated_at, "
                    "src_offset, lease) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    [
                        (
                            r.id,
                            json.dumps(r.data, default=str),
                            status,
                            r.priority,
                            r.line,
                            now,
                            None if r.start is None else r.start.offset,
                            worker_id if status == "running" else None,
                        )
                        for r in group
                    ],
                )
                counted[status] = db.total_changes - before
            taken: list[Item] = []
            if counted["running"]:
                by_id: dict[str | None, Record] = {}
                for r in groups["running"]:
                    by_id.setdefault(r.id, r)  # a repeated id: the first one went in
                for seq, item_id in db.execute(
                    "SELECT seq, id FROM items WHERE seq > ? AND status='running' AND lease=? "
                    "ORDER BY seq",
                    (first_seq, worker_id),
                ):
                    r = by_id[item_id]
                    assert r.data is not None
                    at = None if r.start is None else r.start.offset
                    taken.append(Item(item_id, r.data, r.priority, 0, seq, at, r.line))
                _move(db, None, "running", len(taken))
                self._spend(budgets, len(taken))
            inserted = counted["pending"] + len(taken)
            skipped = counted["skipped"]
            duplicates = 0
            if inserted + skipped < len(valid):
                duplicates = self._record_duplicates(valid)
            before = db.total_changes
            db.executemany(
                "INSERT INTO items (id, data, status, attempts, last_error, line, updated_at) "
                "VALUES (?, NULL, 'failed', 0, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                [(invalid_id(r.line), f"line {r.line}: {r.error}", r.line, now) for r in invalid],
            )
            failed = db.total_changes - before
            _move(db, None, "pending", inserted - len(taken))
            _move(db, None, "skipped", skipped)
            _move(db, None, "failed", failed)
            db.execute(
                'INSERT INTO source_state (one, "offset", line, exhausted) VALUES (1, ?, ?, ?) '
                'ON CONFLICT (one) DO UPDATE SET "offset"=excluded."offset", '
                "line=excluded.line, exhausted=excluded.exhausted",
                (after.offset, after.line, int(exhausted)),
            )
        return IngestResult(inserted, failed, duplicates, skipped, tuple(taken))

    def _record_duplicates(self, valid: Sequence[Record]) -> int:
        # An id already present with another line number is a true duplicate; the same
        # line read again (a source read over from its start) is not.
        first: dict[str, int] = {}
        dups: list[tuple[int, str, int | None]] = []
        for chunk_start in range(0, len(valid), 500):
            chunk = valid[chunk_start : chunk_start + 500]
            marks = ",".join("?" for _ in chunk)
            rows = self.db.execute(
                f"SELECT id, line FROM items WHERE id IN ({marks})", [r.id for r in chunk]
            ).fetchall()
            first.update({r[0]: r[1] for r in rows})
        for r in valid:
            assert r.id is not None
            if first.get(r.id) != r.line:
                dups.append((r.line, r.id, first.get(r.id)))
        # A source read again from its start meets its duplicates again: count them once.
        before = self.db.total_changes
        self.db.executemany(
            "INSERT OR IGNORE INTO duplicates (line, id, first_line) VALUES (?, ?, ?)", dups
        )
        return self.db.total_changes - before

    def duplicates(self, limit: int = 5) -> tuple[int, list[tuple[int, str, int | None]]]:
        (n,) = self.db.execute("SELECT count(*) FROM duplicates").fetchone()
        rows = self.db.execute(
            "SELECT line, id, first_line FROM duplicates ORDER BY line LIMIT ?", (limit,)
        ).fetchall()
        return n, [tuple(r) for r in rows]

    def statuses_of(self, ids: Sequence[str]) -> dict[str, str]:
        """Status of each of ``ids`` that is in the store."""
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" for _ in chunk)
            found.update(
                self.db.execute(f"SELECT id, status FROM items WHERE id IN ({marks})", chunk)
            )
        return found

    # -- claiming and completing -------------------------------------------------------

    def recover(self, now: float = 0.0, stale_after: float = 0.0) -> int:
        """Put items left ``running`` by a dead run back to ``pending`` (one worker holds
        the store, so every item not leased to the live run is such an item)."""
        with _transaction(self.db):
            n = self.db.execute(
                "UPDATE items SET status='pending', lease=NULL WHERE status='running' "
                "AND (lease IS NULL OR lease NOT IN "
                "(SELECT run_id FROM runs WHERE finished_at IS NULL))"
            ).rowcount
            _move(self.db, "running", "pending", n)
        return n

    def _room(self, limit: int, budgets: Sequence[Budget]) -> int:
        for name, most in budgets:
            limit = min(limit, max(0, most - self.counter(name)))
        return limit

    def _spend(self, budgets: Sequence[Budget], n: int) -> None:
        if n:
            self.db.executemany(
                "INSERT INTO counters (name, n) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
                [(name, n) for name, _ in budgets],
            )

    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT n FROM counters WHERE name=?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def claim(
        self, limit: int, worker_id: str, now: float = 0.0, budgets: Sequence[Budget] = ()
    ) -> list[Item]:
        """Take up to ``limit`` pending items, highest priority first, for this run."""
        with _transaction(self.db):
            limit = self._room(limit, budgets)
            if limit <= 0:
                return []
            rows = self.db.execute(
                "UPDATE items SET status='running', lease=? WHERE seq IN "
                "(SELECT seq FROM items WHERE status='pending' ORDER BY priority DESC, seq "
                f"LIMIT ?) RETURNING {_CLAIMED}",
                (worker_id, limit),
            ).fetchall()
            _move(self.db, "pending", "running", len(rows))
            self._spend(budgets, len(rows))
        rows.sort(key=lambda r: (-r[3], r[0]))
        return [_item(r) for r in rows]

    def expedite(self, ids: Sequence[str], now: float) -> dict[str, str]:
        """Move items to the front of the line; returns each id's status before."""
        found = self.statuses_of(list(ids))
        with _transaction(self.db):
            for status in ("pending", "retry", "failed", "skipped"):
                chosen = [(i,) for i, s in found.items() if s == status]
                before = self.db.total_changes
                self.db.executemany(
                    "UPDATE items SET status='pending', priority=?, not_before=NULL, "
                    "updated_at=? WHERE id=? AND status=? AND data IS NOT NULL",
                    [(EXPEDITED, now, i, status) for (i,) in chosen],
                )
                _move(self.db, status, "pending", self.db.total_changes - before)
        return found

    def requeue(self, ids: Sequence[str], now: float) -> dict[str, str]:
        found = self.statuses_of(list(ids))
        with _transaction(self.db):
            for status in ("done", "failed", "skipped", "retry"):
                chosen = [i for i, s in found.items() if s == status]
                before = self.db.total_changes
                self.db.executemany(
                    "UPDATE items SET status='pending', attempts=0, not_before=NULL, "
                    "updated_at=? WHERE id=? AND status=? AND (data IS NOT NULL OR status='done')",
                    [(now, i, status) for i in chosen],
                )
                _move(self.db, status, "pending", self.db.total_changes - before)
        return found

    def claim_expedited(
        self, worker_id: str, now: float = 0.0, budgets: Sequence[Budget] = ()
    ) -> list[Item]:
        """Take the expedited items waiting (a cheap look at the top of the line)."""
        with _transaction(self.db):
            limit = self._room(100, budgets)
            if limit <= 0:
                return []
            rows = self.db.execute(
                "UPDATE items SET status='running', lease=? WHERE seq IN "
                "(SELECT seq FROM items WHERE status='pending' AND priority >= ? "
                f"ORDER BY priority DESC, seq LIMIT ?) RETURNING {_CLAIMED}",
                (worker_id, EXPEDITED, limit),
            ).fetchall()
            _move(self.db, "pending", "running", len(rows))
            self._spend(budgets, len(rows))
        return [_item(r) for r in rows]

    def fill(self, records: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Store again the records of items that had none (read again from the source)."""
        with _transaction(self.db):
            self.db.executemany(
                "UPDATE items SET data=? WHERE seq=? AND data IS NULL",
                [(json.dumps(data, default=str), seq) for seq, data in records],
            )

    def release(self, worker_id: str, budgets: Sequence[Budget] = ()) -> int:
        """Give back every item this run still holds (claimed, never finished)."""
        with _transaction(self.db):
            n = self.db.execute(
                "UPDATE items SET status='pending', lease=NULL WHERE status='running' AND lease=?",
                (worker_id,),
            ).rowcount
            _move(self.db, "running", "pending", n)
            self._spend(budgets, -n)
        return n

    release_lease = release

    def promote_due(self, now: float) -> int:
        """Move retries whose time has come back to ``pending``."""
        with _transaction(self.db):
            n = self.db.execute(
                "UPDATE items SET status='pending' WHERE status='retry' AND not_before <= ?",
                (now,),
            ).rowcount
            _move(self.db, "retry", "pending", n)
        return n

    def next_due(self) -> float | None:
        row = self.db.execute("SELECT min(not_before) FROM items WHERE status='retry'").fetchone()
        return None if row is None else row[0]

    def complete(
        self,
        outcomes: Sequence[Outcome],
        now: float,
        *,
        worker_id: str | None = None,
        rows: Sequence[dict[str, Any]] = (),
        writer: RowWriter | None = None,
        sink_state: str | None = None,
        keys: Sequence[KeyUsage] = (),
        days: Sequence[tuple[str, float, str, float]] = (),
        cost: float = 0.0,
    ) -> list[Outcome]:
        """Record finished attempts (after their rows reached the sink), in one commit."""
        if writer is not None:
            raise StoreError("the SQLite store cannot write a sink's rows in its transaction")
        db = self.db
        outcomes = list({o.seq: o for o in outcomes}.values())  # one outcome per item
        by_status: dict[Status, list[Outcome]] = {}
        for o in outcomes:
            by_status.setdefault(o.status, []).append(o)
        lease = worker_id
        with _transaction(db, durable=True):
            held = self._held([o.seq for o in outcomes], lease)
            if len(held) < len(outcomes):  # a lease was lost: those outcomes count not
                outcomes = [o for o in outcomes if o.seq in held]
                by_status = {}
                for o in outcomes:
                    by_status.setdefault(o.status, []).append(o)
            for status, group in by_status.items():
                before = db.total_changes
                if status is Status.DONE:
                    db.executemany(
                        "UPDATE items SET status='done', attempts=?, last_error=NULL, data=NULL, "
                        "lease=NULL, wrote=?, updated_at=? WHERE seq=? AND status='running' "
                        "AND (? IS NULL OR lease=?)",
                        [(o.attempts, int(o.wrote), now, o.seq, lease, lease) for o in group],
                    )
                else:
                    db.executemany(
                        "UPDATE items SET status=?, attempts=?, last_error=?, not_before=?, "
                        "lease=NULL, updated_at=? WHERE seq=? AND status='running' "
                        "AND (? IS NULL OR lease=?)",
                        [
                            (
                                status.value,
                                o.attempts,
                                o.error,
                                o.not_before,
                                now,
                                o.seq,
                                lease,
                                lease,
                            )
                            for o in group
                        ],
                    )
                _move(db, "running", status.value, db.total_changes - before)
            if cost:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('cost_usd', ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = CAST(CAST(value AS REAL) + ? AS TEXT)",
                    (str(cost), cost),
                )
            self.set_sink_state(sink_state)
            if keys:
                self._add_key_usage(keys, now)
            if days:
                db.executemany(
                    "INSERT INTO key_days (fingerprint, day_start, unit, used) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (fingerprint, day_start, unit) "
                    "DO UPDATE SET used=max(used, excluded.used)",
                    days,
                )
        return list(outcomes)

    def _held(self, seqs: Sequence[int], lease: str | None) -> set[int]:
        """Which of ``seqs`` are running under ``lease`` (any lease when ``None``)."""
        held: set[int] = set()
        for start in range(0, len(seqs), 500):
            chunk = list(seqs[start : start + 500])
            marks = ",".join("?" for _ in chunk)
            held.update(
                r[0]
                for r in self.db.execute(
                    f"SELECT seq FROM items WHERE seq IN ({marks}) AND status='running' "
                    "AND (? IS NULL OR lease=?)",
                    (*chunk, lease, lease),
                )
            )
        return held

    def cost(self) -> float:
        """USD spent by every run so far (from the answers' usage and the job's prices)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='cost_usd'").fetchone()
        return 0.0 if row is None else float(row[0])

    def sink_state(self) -> str | None:
        row = self.db.execute("SELECT value FROM sink_state").fetchone()
        return None if row is None else row[0]

    def set_sink_state(self, value: str | None) -> None:
        if value is None:
            return
        self.db.execute(
            "INSERT INTO sink_state (one, value) VALUES (1, ?) "
            "ON CONFLICT (one) DO UPDATE SET value=excluded.value",
            (value,),
        )

    def retry_failed(self, *, invalid: bool = False) -> int:
        """Put failed items back to ``pending`` with a fresh retry budget.

        Lines that were not valid items stay failed: they need fixing in the source. With
        ``invalid``, they are forgotten instead and the source is read again from its
        start, so lines fixed since are taken (lines already in the store are not read
        twice).
        """
        with _transaction(self.db):
            n = self.db.execute(
                "UPDATE items SET status='pending', attempts=0, not_before=NULL "
                "WHERE status='failed' AND data IS NOT NULL"
            ).rowcount
            _move(self.db, "failed", "pending", n)
            if invalid:
                gone = self.db.execute(
                    "DELETE FROM items WHERE status='failed' AND data IS NULL"
                ).rowcount
                _move(self.db, None, "failed", -gone)
                self.db.execute("DELETE FROM source_state")
                n += gone
        return n

    # -- reading -----------------------------------------------------------------------

    def iter_statuses(self, size: int) -> Iterator[list[tuple[str, str, int]]]:
        """(id, status) of every item, in batches of ``size`` (by seq, so a restart of
        the reading does not depend on the count of done items)."""
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT seq, id, status, coalesce(wrote, 1) FROM items "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, size),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [(r[1], r[2], r[3]) for r in rows]

    def iter_items(self, statuses: Sequence[str] = ()) -> Iterator[StoredItem]:
        last = 0
        where = f"AND status IN ({','.join('?' for _ in statuses)})" if statuses else ""
        while True:
            rows = self.db.execute(
                "SELECT seq, id, status, attempts, last_error, line, coalesce(wrote, 0) "
                f"FROM items WHERE seq > ? {where} ORDER BY seq LIMIT 1000",
                (last, *statuses),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for r in rows:
                yield StoredItem(r[0], r[1], Status(r[2]), r[3], r[4], r[5], bool(r[6]))

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, n FROM counts"))

    def recent_failures(self, limit: int = 5) -> list[tuple[str, int, str]]:
        return [(f.id, f.attempts, f.error) for f in self.failures(limit)]

    def failures(self, limit: int | None = None) -> Iterator[FailedItem]:
        cursor = self.db.execute(
            "SELECT id, attempts, last_error, line, updated_at, data IS NULL FROM items "
            "WHERE status='failed' ORDER BY updated_at DESC, seq DESC LIMIT ?",
            (-1 if limit is None else limit,),
        )
        for r in cursor:
            yield FailedItem(r[0], r[1], r[2] or "", r[3], r[4], bool(r[5]))

    def key_usage(self) -> list[KeyUsage]:
        rows = self.db.execute(
            "SELECT fingerprint, masked, requests, tokens, rate_limited, errors, state, until, "
            "reason, info FROM keys ORDER BY masked"
        ).fetchall()
        return [
            KeyUsage(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], _json(r[9]))
            for r in rows
        ]

    def day_usage(self, fingerprint: str, day_start: float) -> dict[str, float]:
        """What a key group spent in the day window starting at ``day_start``, by unit."""
        return dict(
            self.db.execute(
                "SELECT unit, used FROM key_days WHERE fingerprint=? AND day_start=?",
                (fingerprint, day_start),
            )
        )

    def _add_key_usage(self, keys: Sequence[KeyUsage], now: float) -> None:
        self.db.executemany(
            "INSERT INTO keys (fingerprint, masked, requests, tokens, rate_limited, errors, "
            "state, until, reason, info, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (fingerprint) DO "
            "UPDATE SET requests=requests+excluded.requests, tokens=tokens+excluded.tokens, "
            "rate_limited=rate_limited+excluded.rate_limited, errors=errors+excluded.errors, "
            "state=excluded.state, until=excluded.until, reason=excluded.reason, "
            "info=excluded.info, updated_at=excluded.updated_at",
            [_key_row(k, now) for k in keys],
        )


_CLAIMED = "seq, id, data, priority, attempts, src_offset, line"


def _item(r: Sequence[Any]) -> Item:
    """A claimed row as an item (its record to be read again when the store has none)."""
    whole = r[2] is not None
    data = json.loads(r[2]) if whole else {}
    return Item(r[1], data, r[3], r[4], r[0], source_at=r[5], line=r[6], whole=whole)


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _key_row(k: KeyUsage, now: float) -> tuple[Any, ...]:
    info = json.dumps(k.info) if k.info is not None else None
    return (
        k.fingerprint, k.masked, k.requests, k.tokens, k.rate_limited, k.errors, k.state,
        k.until, k.reason, info, now,
    )  # fmt: skip


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on error (autocommit connection).

    ``durable``: the commit waits until the disk has it (``synchronous=FULL``), where the
    connection otherwise lets the operating system write it back (``NORMAL``).
    """

    def __init__(self, db: sqlite3.Connection, *, durable: bool = False) -> None:
        self.db = db
        self.durable = durable

    def __enter__(self) -> None:
        if self.durable:
            self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.db.execute("COMMIT")
            elif self.db.in_transaction:  # an error may have ended the transaction already
                self.db.execute("ROLLBACK")
        finally:
            if self.durable:
                self.db.execute("PRAGMA synchronous=NORMAL")


def _move(db: sqlite3.Connection, src: str | None, dst: str, n: int) -> None:
    if n == 0:
        return
    if src is not None:
        db.execute("UPDATE counts SET n = n - ? WHERE status = ?", (n, src))
    db.execute("UPDATE counts SET n = n + ? WHERE status = ?", (n, dst))


def _run(row: Sequence[Any]) -> WorkerInfo:
    stats = json.loads(row[7]) if row[7] else {}
    return WorkerInfo(row[0], row[0], row[1], row[2], row[3], row[4], row[5], row[6], stats)
