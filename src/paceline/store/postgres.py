"""The PostgreSQL store: one job's state shared by any number of workers on any machines.

Each job lives in its own schema (``paceline_<job>``) of the database the DSN names. Workers
claim items with ``FOR UPDATE SKIP LOCKED`` under a lease (the worker's id); a worker's
heartbeat keeps its leases, and once it stops for ``stale_after`` seconds any worker puts
its items back in line. One worker at a time reads the source, under a session advisory
lock; the position it reached is committed with the items. A :class:`PostgresSink` in the
same database writes its rows in the store's transaction, so the rows and the ``done``
marks commit together.

Needs the ``postgres`` extra: ``pip install 'paceline[postgres]'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any, TypeVar

from paceline.errors import ConfigError, StoreError
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

__all__ = ["PostgresStore", "StoreConnectionError", "is_postgres", "redacted_dsn"]

T = TypeVar("T")
SCHEMA_VERSION = "1"
SHARDS = 64
#: How long an operation keeps trying to reconnect after the connection dropped.
RECONNECT_FOR = 60.0


class StoreConnectionError(StoreError):
    """The connection to the store's database dropped and did not come back in time."""


def is_postgres(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redacted_dsn(dsn: str) -> str:
    """The DSN without its password (for messages and ``status``)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", dsn)


def schema_for(job: str) -> str:
    """The job's schema name: ``paceline_<job>``, shortened with a hash past 63 bytes."""
    name = f"paceline_{job}"
    if len(name) > 63:
        name = f"paceline_{job[:40]}_{hashlib.sha256(job.encode()).hexdigest()[:12]}"
    return name


def _queries(schema: str) -> dict[str, str]:
    text = resources.files(__package__).joinpath("sql/postgres_queries.sql").read_text()
    out: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, sql = block.partition("\n")
        out[name.strip()] = sql.strip().rstrip(";").replace("{schema}", schema)
    return out


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "the PostgreSQL store needs the postgres extra: pip install 'paceline[postgres]'"
        ) from None
    return psycopg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PostgresStore:
    """A job's durable state in a PostgreSQL database, shared by many workers."""

    shared = True

    def __init__(self, dsn: str, job: str, *, readonly: bool = False) -> None:
        self.psycopg = _psycopg()
        self.dsn = dsn
        self.job = job
        self.readonly = readonly
        self.schema_name = schema_for(job)
        self.schema = '"' + self.schema_name.replace('"', '""') + '"'
        self.q = _queries(self.schema)
        self.shard = random.randrange(SHARDS)
        self._source_locked = False
        self._lock_key = int.from_bytes(
            hashlib.sha256(f"{self.schema_name}:source".encode()).digest()[:8], "big", signed=True
        )
        self.conn: Any = None
        self._connect()
        if readonly and not self._schema_exists():
            self.close()
            raise StoreError(f"no store for job {job!r} in {self.target}: the job has not run yet")

    # -- connection --------------------------------------------------------------------

    @property
    def target(self) -> str:
        return redacted_dsn(self.dsn)

    def _connect(self) -> None:
        psycopg = self.psycopg
        try:
            self.conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=10, application_name="paceline"
            )
        except psycopg.OperationalError as exc:
            raise StoreConnectionError(
                f"cannot connect to the store at {self.target}: {_first_line(exc)}"
            ) from None
        except psycopg.Error as exc:  # e.g. a malformed DSN
            raise StoreError(
                f"cannot open the store at {self.target}: {_first_line(exc)}"
            ) from None

    def _schema_exists(self) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema_name,)
        ).fetchone()
        return row is not None

    def _call(self, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``fn(connection)``; a dropped connection is reopened and ``fn`` run again
        (every caller is one transaction, so a retry redoes it whole or finds it done).
        Other driver errors become one :class:`StoreError`."""
        psycopg = self.psycopg
        deadline = time.monotonic() + RECONNECT_FOR
        delay = 0.2
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self._reconnect()
                return fn(self.conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                # Rolled back whole: run the transaction again (rare: locks are taken in
                # one order everywhere; two workers may still meet on a counts shard).
                if time.monotonic() > deadline:
                    raise StoreError(f"store {self.target}: {_first_line(exc)}") from None
                time.sleep(random.uniform(0.01, 0.1))
            except (psycopg.OperationalError, psycopg.InterfaceError, StoreConnectionError) as exc:
                broken = self.conn is None or self.conn.closed or self.conn.broken
                if not (broken or isinstance(exc, StoreConnectionError)) or not retry:
                    raise StoreError(f"store {self.target}: {_first_line(exc)}") from None
                if time.monotonic() > deadline:
                    raise StoreConnectionError(
                        f"lost the connection to the store at {self.target}: {_first_line(exc)}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.conn = None
            except psycopg.Error as exc:
                raise StoreError(f"store {self.target}: {_first_line(exc)}") from None

    def _fetchone(self, name: str, args: dict[str, Any] | None = None) -> Any:
        def fetch(conn: Any) -> Any:
            return conn.execute(self.q[name], args).fetchone()

        return self._call(fetch)

    def _fetchall(self, name: str, args: dict[str, Any] | None = None) -> list[Any]:
        def fetch(conn: Any) -> list[Any]:
            return list(conn.execute(self.q[name], args).fetchall())

        return self._call(fetch)

    def _execute(self, name: str, args: dict[str, Any] | None = None) -> None:
        def execute(conn: Any) -> None:
            conn.execute(self.q[name], args)

        self._call(execute)

    def _reconnect(self) -> None:
        had_lock = self._source_locked
        self._source_locked = False
        self._connect()
        if had_lock:  # a session lock dies with its session: take it again, if free
            self._source_locked = bool(
                self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key,)).fetchone()[
                    0
                ]
            )

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()

    def shares_database(self, sink: object) -> bool:
        """Whether ``sink`` writes to a table of this store's database (same server,
        database and user): then its rows commit in the store's transaction."""
        dsn = getattr(sink, "dsn", None)
        if not isinstance(sink, RowWriter) or not isinstance(dsn, str):
            return False
        conninfo = self.psycopg.conninfo.conninfo_to_dict

        def where(d: str) -> tuple[Any, ...]:
            info = conninfo(d)
            return (
                info.get("host") or os.environ.get("PGHOST") or "localhost",
                str(info.get("port") or os.environ.get("PGPORT") or "5432"),
                info.get("dbname") or os.environ.get("PGDATABASE"),
                info.get("user") or os.environ.get("PGUSER"),
            )

        try:
            return where(dsn) == where(self.dsn)
        except self.psycopg.Error:
            return False

    # -- job and workers ---------------------------------------------------------------

    def bind_job(self, name: str) -> None:
        """Create the job's schema on first use; refuse a schema of another job."""

        def bind(conn: Any) -> None:
            with conn.transaction():
                # One worker creates the tables; the others wait for it here.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key + 1,))
                if not self.readonly:
                    ddl = resources.files(__package__).joinpath("sql/postgres.sql").read_text()
                    conn.execute(ddl.replace("{schema}", self.schema))
                    conn.execute(self.q["bind"], {"job": name, "version": SCHEMA_VERSION})
                row = conn.execute(self.q["job"]).fetchone()
            if row is not None and row[0] != name:
                raise StoreError(
                    f"schema {self.schema_name} in {self.target} belongs to job {row[0]!r}, "
                    f"not {name!r}"
                )

        self._call(bind)

    def register_worker(self, worker_id: str, now: float, stale_after: float) -> WorkerInfo:
        """Join the run of the workers alive now, or start a new run."""
        host, pid = socket.gethostname(), os.getpid()

        def register(conn: Any) -> WorkerInfo:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key + 2,))
                self._bury(conn, now, stale_after)
                live = conn.execute(self.q["live_workers"], {"since": now - stale_after})
                alive = [_worker(r) for r in live]
                run_id = alive[-1].run_id if alive else worker_id
                conn.execute(
                    self.q["insert_worker"],
                    {"worker": worker_id, "run": run_id, "pid": pid, "host": host, "now": now},
                )
            return WorkerInfo(worker_id, run_id, pid, host, now, now, None, "running", {})

        return self._call(register)

    def workers(self, now: float, *, live_only: bool = True) -> list[WorkerInfo]:
        def read(conn: Any) -> list[WorkerInfo]:
            if live_only:
                rows = conn.execute(self.q["live_workers"], {"since": now - 15.0})
            else:
                rows = conn.execute(self.q["all_workers"])
            return [_worker(r) for r in rows]

        return self._call(read)

    def live_run(self, now: float, stale_after: float = 15.0) -> WorkerInfo | None:
        live = self.workers(now)
        return live[0] if live else None

    def last_run(self) -> WorkerInfo | None:
        row = self._fetchone("last_worker")
        return None if row is None else _worker(row)

    def heartbeat(self, worker_id: str, now: float, stats: dict[str, Any]) -> Control:
        def beat(conn: Any) -> Control:
            with conn.transaction():
                row = conn.execute(
                    self.q["heartbeat"],
                    {"worker": worker_id, "now": now, "stats": json.dumps(stats)},
                ).fetchone()
            if row is None:
                return Control(lost=True)
            started, finished, stop_at = row
            stop = stop_at is not None and float(stop_at) >= started
            return Control(stop_requested=stop, lost=finished is not None)

        return self._call(beat)

    def finish_worker(self, worker_id: str, now: float, state: str, stats: dict[str, Any]) -> None:
        args = {"worker": worker_id, "now": now, "state": state, "stats": json.dumps(stats)}
        self._execute("finish_worker", args)

    def request_stop(self, now: float) -> int:
        self._execute("request_stop", {"now": repr(now)})
        return len(self.workers(now))

    def recover(self, now: float, stale_after: float) -> int:
        def recover(conn: Any) -> int:
            with conn.transaction():
                self._bury(conn, now, stale_after)
                n = len(conn.execute(self.q["recover"]).fetchall())
                self._move(conn, {"running": -n, "pending": n})
            return n

        return self._call(recover)

    def _bury(self, conn: Any, now: float, stale_after: float) -> None:
        """Mark gone the workers whose heartbeat stopped, and at once those of this
        machine whose process has exited (a worker restarted here takes over at once)."""
        conn.execute(self.q["bury_workers"], {"now": now, "since": now - stale_after})
        host = socket.gethostname()
        here = conn.execute(self.q["live_here"], {"host": host}).fetchall()
        gone = [w for w, pid, started in here if not worker_alive(int(pid), float(started))]
        if gone:
            conn.execute(self.q["bury"], {"now": now, "workers": gone})

    # -- counts and budgets ------------------------------------------------------------

    def _move(self, conn: Any, deltas: dict[str, int]) -> None:
        changed = {s: d for s, d in deltas.items() if d}
        if changed:
            statuses = sorted(changed)
            conn.execute(
                self.q["move_counts"],
                {
                    "shard": self.shard,
                    "statuses": statuses,
                    "deltas": [changed[s] for s in statuses],
                },
            )

    def counts(self) -> dict[str, int]:
        found = dict(self._fetchall("counts"))
        return {s: int(found.get(s, 0)) for s in Status}

    def counter(self, name: str) -> int:
        row = self._fetchone("counter", {"name": name})
        return 0 if row is None else int(row[0])

    def _room(self, conn: Any, limit: int, budgets: Sequence[Budget]) -> int:
        if not budgets:
            return limit
        names = sorted(name for name, _ in budgets)
        conn.execute(self.q["ensure_counters"], {"names": names})
        taken = dict(conn.execute(self.q["counter_for_update"], {"names": names}).fetchall())
        for name, most in budgets:
            limit = min(limit, max(0, most - int(taken.get(name, 0))))
        return limit

    def _spend(self, conn: Any, budgets: Sequence[Budget], n: int) -> None:
        if budgets and n:
            conn.execute(self.q["spend"], {"n": n, "names": sorted(b[0] for b in budgets)})

    # -- source ------------------------------------------------------------------------

    def lock_source(self, worker_id: str) -> bool:
        if not self._source_locked:
            row = self._call(
                lambda c: c.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key,)).fetchone()
            )
            self._source_locked = bool(row[0])
        return self._source_locked

    def unlock_source(self) -> None:
        if self._source_locked:
            self._source_locked = False
            self._call(
                lambda c: c.execute("SELECT pg_advisory_unlock(%s)", (self._lock_key,)),
                retry=False,
            )

    def source_position(self) -> tuple[Position, bool]:
        row = self._fetchone("source_position")
        if row is None:
            return Position(), False
        return Position(int(row[0]), int(row[1])), bool(row[2])

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
        """Insert a chunk of records and the position after them, atomically (new items
        go in pending: every worker claims its share)."""
        valid = [r for r in records if r.error is None]
        invalid = [r for r in records if r.error is not None]

        def ingest(conn: Any) -> IngestResult:
            with conn.transaction():
                conn.execute(self.q["stage"])
                with conn.cursor() as cur:
                    with cur.copy(
                        "COPY paceline_stage2 (id, data, status, priority, line, src_offset) "
                        "FROM STDIN"
                    ) as copy:
                        for r in valid:
                            status = "skipped" if r.skip else "pending"
                            data = json.dumps(r.data, default=str)
                            at = None if r.start is None else r.start.offset
                            copy.write_row((r.id, data, status, r.priority, r.line, at))
                    added = [s for (s,) in cur.execute(self.q["ingest_staged"], {"now": now})]
                inserted, skipped = added.count("pending"), added.count("skipped")
                duplicates = 0
                if len(added) < len(valid):
                    duplicates = self._record_duplicates(conn, valid)
                failed = 0
                if invalid:
                    n = len(invalid)
                    failed = len(
                        conn.execute(
                            self.q["ingest_invalid"],
                            {
                                "ids": [invalid_id(r.line) for r in invalid],
                                "nulls": [None] * n,
                                "statuses": ["failed"] * n,
                                "zeros": [0] * n,
                                "errors": [f"line {r.line}: {r.error}" for r in invalid],
                                "lines": [r.line for r in invalid],
                                "nows": [now] * n,
                            },
                        ).fetchall()
                    )
                self._move(conn, {"pending": inserted, "skipped": skipped, "failed": failed})
                conn.execute(
                    self.q["set_source_position"],
                    {"offset": after.offset, "line": after.line, "exhausted": exhausted},
                )
            return IngestResult(inserted, failed, duplicates, skipped)

        return self._call(ingest)

    def _record_duplicates(self, conn: Any, valid: Sequence[Record]) -> int:
        # An id already present with another line number is a true duplicate; the same
        # line read again (a source read over from its start) is not.
        first = dict(conn.execute(self.q["first_lines"], {"ids": [r.id for r in valid]}))
        dups = [(r.line, r.id, first.get(r.id)) for r in valid if first.get(r.id) != r.line]
        if not dups:
            return 0
        rows = conn.execute(
            self.q["record_duplicates"],
            {
                "lines": [d[0] for d in dups],
                "ids": [d[1] for d in dups],
                "firsts": [d[2] for d in dups],
            },
        ).fetchall()
        return len(rows)

    def duplicates(self, limit: int = 5) -> tuple[int, list[tuple[int, str, int | None]]]:
        def read(conn: Any) -> tuple[int, list[tuple[int, str, int | None]]]:
            (n,) = conn.execute(self.q["duplicates_count"]).fetchone()
            rows = conn.execute(self.q["duplicates_some"], {"limit": limit}).fetchall()
            return int(n), [(int(r[0]), r[1], None if r[2] is None else int(r[2])) for r in rows]

        return self._call(read)

    def statuses_of(self, ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(ids), 5000):
            chunk = list(ids[start : start + 5000])
            found.update(self._fetchall("statuses_of", {"ids": chunk}))
        return found

    # -- claiming and completing -------------------------------------------------------

    def _take(
        self, query: str, limit: int, worker_id: str, budgets: Sequence[Budget]
    ) -> list[Item]:
        def take(conn: Any) -> list[Any]:
            with conn.transaction():
                room = self._room(conn, limit, budgets)
                if room <= 0:
                    return []
                rows = conn.execute(
                    query, {"worker": worker_id, "limit": room, "expedited": EXPEDITED}
                ).fetchall()
                self._move(conn, {"pending": -len(rows), "running": len(rows)})
                self._spend(conn, budgets, len(rows))
            return list(rows)

        rows = self._call(take)
        rows.sort(key=lambda r: (-r[3], r[0]))
        return [_item(r) for r in rows]

    def fill(self, records: Sequence[tuple[int, dict[str, Any]]]) -> None:
        if records:
            args = {
                "seqs": [seq for seq, _ in records],
                "datas": [json.dumps(data, default=str) for _, data in records],
            }
            self._execute("fill", args)

    def claim(
        self, limit: int, worker_id: str, now: float = 0.0, budgets: Sequence[Budget] = ()
    ) -> list[Item]:
        return self._take(self.q["claim"], limit, worker_id, budgets)

    def claim_expedited(
        self, worker_id: str, now: float = 0.0, budgets: Sequence[Budget] = ()
    ) -> list[Item]:
        return self._take(self.q["claim_expedited"], 100, worker_id, budgets)

    def release(self, worker_id: str, budgets: Sequence[Budget] = ()) -> int:
        def release(conn: Any) -> int:
            with conn.transaction():
                if budgets:  # counters first, as a claim takes them: one lock order
                    names = sorted(name for name, _ in budgets)
                    conn.execute(self.q["counter_for_update"], {"names": names})
                n = len(conn.execute(self.q["release"], {"worker": worker_id}).fetchall())
                self._move(conn, {"running": -n, "pending": n})
                self._spend(conn, budgets, -n)
            return n

        return self._call(release)

    def promote_due(self, now: float) -> int:
        def promote(conn: Any) -> int:
            with conn.transaction():
                n = len(conn.execute(self.q["promote_due"], {"now": now}).fetchall())
                self._move(conn, {"retry": -n, "pending": n})
            return n

        return self._call(promote)

    def next_due(self) -> float | None:
        row = self._fetchone("next_due")
        return None if row is None or row[0] is None else float(row[0])

    def complete(
        self,
        outcomes: Sequence[Outcome],
        now: float,
        *,
        worker_id: str,
        rows: Sequence[dict[str, Any]] = (),
        writer: RowWriter | None = None,
        sink_state: str | None = None,
        keys: Sequence[KeyUsage] = (),
        days: Sequence[tuple[str, float, str, float]] = (),
        cost: float = 0.0,
    ) -> list[Outcome]:
        """Record finished attempts in one transaction; with ``writer`` the sink rows of
        the ``done`` items whose lease held go in the same transaction."""
        psycopg = self.psycopg
        outcomes = list({o.seq: o for o in outcomes}.values())  # one outcome per item

        def complete(conn: Any) -> list[Outcome]:
            with conn.transaction():
                counted_seqs: set[int] = set()
                if outcomes:
                    found = conn.execute(
                        self.q["complete"],
                        {
                            "now": now,
                            "worker": worker_id,
                            "seqs": [o.seq for o in outcomes],
                            "statuses": [o.status.value for o in outcomes],
                            "attempts": [o.attempts for o in outcomes],
                            "errors": [o.error for o in outcomes],
                            "not_befores": [o.not_before for o in outcomes],
                            "wrotes": [o.wrote for o in outcomes],
                        },
                    ).fetchall()
                    counted_seqs = {int(r[0]) for r in found}
                counted = [o for o in outcomes if o.seq in counted_seqs]
                if writer is not None and rows:
                    counted = self._write_rows(conn, writer, counted, rows, psycopg)
                deltas: dict[str, int] = {"running": -len(counted)}
                for o in counted:
                    deltas[o.status.value] = deltas.get(o.status.value, 0) + 1
                self._move(conn, deltas)
                if cost:
                    conn.execute(self.q["add_cost"], {"cost": cost})
                if sink_state is not None:
                    conn.execute(self.q["set_sink_state"], {"value": sink_state})
                if keys:
                    self._add_key_usage(conn, keys, now)
                if days:
                    conn.execute(
                        self.q["key_days"],
                        {
                            "fps": [d[0] for d in days],
                            "starts": [d[1] for d in days],
                            "units": [d[2] for d in days],
                            "used": [d[3] for d in days],
                        },
                    )
            return counted

        return self._call(complete)

    def _write_rows(
        self,
        conn: Any,
        writer: RowWriter,
        counted: list[Outcome],
        rows: Sequence[dict[str, Any]],
        psycopg: Any,
    ) -> list[Outcome]:
        """Write the rows of counted ``done`` items; a row the table refuses fails its item."""
        done = {o.item_id for o in counted if o.status is Status.DONE and o.wrote}
        mine = [r for r in rows if r.get("id") in done]
        if not mine:
            return counted
        try:
            with conn.transaction():  # a savepoint: a refused row undoes only this
                writer.write_in(conn, mine)
            return counted
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except (psycopg.Error, ConfigError):
            pass
        refused: dict[str, str] = {}
        for row in mine:
            try:
                with conn.transaction():
                    writer.write_in(conn, [row])
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except (psycopg.Error, ConfigError) as exc:
                refused[str(row["id"])] = f"the sink refused the result: {_first_line(exc)}"
        if not refused:
            return counted
        out = []
        for o in counted:
            if o.item_id in refused:
                o = Outcome(o.seq, Status.FAILED, o.attempts, refused[o.item_id], None, o.item_id)
            out.append(o)
        failed = [o for o in out if o.item_id in refused]
        conn.execute(
            self.q["refuse"],
            {"seqs": [o.seq for o in failed], "errors": [o.error for o in failed]},
        )
        return out

    def _add_key_usage(self, conn: Any, keys: Sequence[KeyUsage], now: float) -> None:
        conn.execute(
            self.q["add_key_usage"],
            {
                "fps": [k.fingerprint for k in keys],
                "masked": [k.masked for k in keys],
                "requests": [k.requests for k in keys],
                "tokens": [k.tokens for k in keys],
                "limited": [k.rate_limited for k in keys],
                "errors": [k.errors for k in keys],
                "states": [k.state for k in keys],
                "untils": [k.until for k in keys],
                "reasons": [k.reason for k in keys],
                "infos": [json.dumps(k.info) if k.info is not None else None for k in keys],
                "nows": [now] * len(keys),
            },
        )

    def expedite(self, ids: Sequence[str], now: float) -> dict[str, str]:
        found = self.statuses_of(list(ids))

        def expedite(conn: Any) -> None:
            with conn.transaction():
                moved = conn.execute(
                    self.q["expedite"], {"ids": list(ids), "expedited": EXPEDITED, "now": now}
                ).fetchall()
                deltas: dict[str, int] = {}
                for (before,) in moved:
                    deltas[before] = deltas.get(before, 0) - 1
                    deltas["pending"] = deltas.get("pending", 0) + 1
                self._move(conn, deltas)

        self._call(expedite)
        return found

    def requeue(self, ids: Sequence[str], now: float) -> dict[str, str]:
        found = self.statuses_of(list(ids))

        def requeue(conn: Any) -> None:
            with conn.transaction():
                moved = conn.execute(self.q["requeue"], {"ids": list(ids), "now": now})
                deltas: dict[str, int] = {}
                for (before,) in moved.fetchall():
                    deltas[before] = deltas.get(before, 0) - 1
                    deltas["pending"] = deltas.get("pending", 0) + 1
                self._move(conn, deltas)

        self._call(requeue)
        return found

    def retry_failed(self, *, invalid: bool = False) -> int:
        def retry(conn: Any) -> int:
            with conn.transaction():
                n = len(conn.execute(self.q["retry_failed"]).fetchall())
                self._move(conn, {"failed": -n, "pending": n})
                if invalid:
                    gone = len(conn.execute(self.q["forget_invalid"]).fetchall())
                    self._move(conn, {"failed": -gone})
                    conn.execute(self.q["forget_position"])
                    n += gone
            return n

        return self._call(retry)

    def cost(self) -> float:
        row = self._fetchone("cost")
        return 0.0 if row is None else float(row[0])

    def sink_state(self) -> str | None:
        row = self._fetchone("sink_state")
        return None if row is None else row[0]

    def set_sink_state(self, value: str | None) -> None:
        if value is not None:
            self._execute("set_sink_state", {"value": value})

    # -- reading -----------------------------------------------------------------------

    def iter_statuses(self, size: int) -> Iterator[list[tuple[str, str, int]]]:
        last = 0
        while True:
            args = {"after": last, "limit": size}
            rows = self._fetchall("iter_statuses", args)
            if not rows:
                return
            last = rows[-1][0]
            yield [(r[1], r[2], int(r[3])) for r in rows]

    def iter_items(self, statuses: Sequence[str] = ()) -> Iterator[StoredItem]:
        last = 0
        while True:
            args = {"after": last, "statuses": list(statuses)}
            rows = self._fetchall("iter_items", args)
            if not rows:
                return
            last = rows[-1][0]
            for r in rows:
                yield StoredItem(r[0], r[1], Status(r[2]), r[3], r[4], r[5], bool(r[6]))

    def recent_failures(self, limit: int = 5) -> list[tuple[str, int, str]]:
        return [(f.id, f.attempts, f.error) for f in self.failures(limit)]

    def failures(self, limit: int | None = None) -> Iterator[FailedItem]:
        rows = self._fetchall("failures", {"limit": limit})
        for r in rows:
            line = None if r[3] is None else int(r[3])
            yield FailedItem(r[0], r[1], r[2] or "", line, r[4], bool(r[5]))

    def key_usage(self) -> list[KeyUsage]:
        rows = self._fetchall("key_usage")
        return [
            KeyUsage(
                r[0],
                r[1],
                int(r[2]),
                int(r[3]),
                int(r[4]),
                int(r[5]),
                r[6],
                r[7],
                r[8],
                json.loads(r[9]) if r[9] else None,
            )
            for r in rows
        ]

    def day_usage(self, fingerprint: str, day_start: float) -> dict[str, float]:
        args = {"fp": fingerprint, "start": day_start}
        return dict(self._fetchall("day_usage", args))


def _item(r: Sequence[Any]) -> Item:
    """A claimed row as an item (its record to be read again when the store has none)."""
    whole = r[2] is not None
    data = json.loads(r[2]) if whole else {}
    at = None if r[5] is None else int(r[5])
    line = None if r[6] is None else int(r[6])
    return Item(r[1], data, r[3], r[4], int(r[0]), source_at=at, line=line, whole=whole)


def _worker(row: Sequence[Any]) -> WorkerInfo:
    stats = json.loads(row[8]) if row[8] else {}
    return WorkerInfo(
        row[0], row[1], int(row[2]), row[3], float(row[4]), float(row[5]),
        None if row[6] is None else float(row[6]), row[7], stats,
    )  # fmt: skip
