"""Where results go: written in batches, keyed by item id, safe to replay.

The engine writes a batch to the sink *before* it marks those items done in the store, so
a crash between the two replays the batch on the next run. Table sinks upsert by item id,
which makes a replay harmless; the JSONL sink records its committed length in the store
(the *state* returned by :meth:`Sink.write`) and cuts anything after it on open, so a line
is never written twice nor left torn.

Every sink sees rows as dicts with the item id under ``"id"``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError, SinkError

__all__ = ["Batch", "BatchSizer", "CallableSink", "JSONLSink", "SQLiteSink", "Sink", "as_sink"]

Row = dict[str, Any]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@runtime_checkable
class Sink(Protocol):
    """A destination for result rows.

    ``open`` receives the state the store committed last (``None`` on the first run) and
    returns the state to commit now; ``write`` returns the state after a batch. Sinks that
    upsert need no state and return ``None``.
    """

    def describe(self) -> str: ...

    def open(self, state: str | None) -> str | None: ...

    def write(self, rows: Sequence[Row]) -> str | None: ...

    def close(self) -> None: ...


def _json_default(value: Any) -> Any:
    return str(value)


def _sql_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bytes)):
        return value
    return json.dumps(value, default=_json_default, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Batch:
    """Results per sink write: between ``min`` and ``max``, sized so that one write takes
    about ``target`` seconds (a slow sink gets small batches, a fast one large ones).

    >>> Job(..., batch=Batch(min=50, max=5000, target=1.0))  # doctest: +SKIP
    """

    min: int = 10
    max: int = 1_000
    target: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max or self.target <= 0:
            raise ConfigError("Batch: need 1 <= min <= max and a positive target")

    def start(self) -> BatchSizer:
        return BatchSizer(self)


class BatchSizer:
    """The batch size now, learned from how long writes take."""

    __slots__ = ("batch", "per_row", "size")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.size = max(batch.min, min(batch.max, 100))
        self.per_row: float | None = None  # moving average of seconds per row

    def observe(self, rows: int, seconds: float) -> None:
        per_row = seconds / max(1, rows)
        self.per_row = (
            per_row if self.per_row is None else self.per_row + 0.3 * (per_row - self.per_row)
        )
        ideal = self.batch.target / self.per_row if self.per_row > 0 else self.batch.max
        self.size = max(self.batch.min, min(self.batch.max, round(ideal)))


class SQLiteSink:
    """A table in a SQLite file, upserted by item id (column ``id``).

    The table is created on the first write with one column per result field; fields that
    appear later are added as columns.
    """

    def __init__(self, path: str | os.PathLike[str], *, table: str) -> None:
        if not _NAME.match(table):
            raise ConfigError(f"SQLiteSink: table name {table!r} is not a plain identifier")
        self.path = Path(path)
        self.table = table
        self._db: sqlite3.Connection | None = None
        self._columns: list[str] = []

    def describe(self) -> str:
        return f"SQLite table {self.table!r} in {self.path}"

    def open(self, state: str | None) -> str | None:
        # Connected on the first write: a run that fails to start leaves no empty file.
        # A file already there is looked at now: one that is no database stops the run
        # before any item is spent on it.
        if self.path.exists():
            try:
                self._connect()
            except sqlite3.DatabaseError as exc:
                self.close()
                raise SinkError(f"{self.describe()}: {exc}") from None
        return None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._db = db
            self._columns = [r[1] for r in db.execute(f'PRAGMA table_info("{self.table}")')]
        return self._db

    def _ensure_columns(self, names: Sequence[str]) -> None:
        assert self._db is not None
        if not self._columns:
            cols = ", ".join(f'"{n}"' for n in names if n != "id")
            cols = f", {cols}" if cols else ""
            self._db.execute(
                f'CREATE TABLE IF NOT EXISTS "{self.table}" (id TEXT PRIMARY KEY{cols})'
            )
            self._columns = ["id", *[n for n in names if n != "id"]]
            return
        known = {c.lower() for c in self._columns}  # SQLite column names ignore case
        for name in names:
            if name.lower() not in known:
                known.add(name.lower())
                self._db.execute(f'ALTER TABLE "{self.table}" ADD COLUMN "{name}"')
                self._columns.append(name)

    def write(self, rows: Sequence[Row]) -> str | None:
        db = self._connect()
        groups: dict[tuple[str, ...], list[Row]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        with db:
            for names, group in groups.items():
                for name in names:
                    if not _NAME.match(name):
                        raise ConfigError(f"result field {name!r} is not a valid column name")
                self._ensure_columns(names)
                cols = ", ".join(f'"{n}"' for n in names)
                marks = ", ".join("?" for _ in names)
                updates = ", ".join(f'"{n}"=excluded."{n}"' for n in names if n != "id")
                action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
                sql = (
                    f'INSERT INTO "{self.table}" ({cols}) VALUES ({marks}) ON CONFLICT(id) {action}'
                )
                db.executemany(sql, [[_sql_value(r[n]) for n in names] for r in group])
        return None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def read_rows(self) -> Iterator[Row]:
        """Every row written, for ``paceline verify`` (a read-only connection)."""
        if not self.path.exists():
            return
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            try:
                cursor = db.execute(f'SELECT * FROM "{self.table}"')
            except sqlite3.OperationalError:
                return  # no table yet: nothing written
            names = [d[0] for d in cursor.description]
            for values in cursor:
                yield dict(zip(names, values, strict=True))
        finally:
            db.close()


class JSONLSink:
    """A JSONL file, one line per done item, written exactly once across crashes.

    The committed length of the file lives in the store; on open, anything beyond it (a
    torn line, or a batch whose items were not marked done) is cut off and written again.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: Any = None

    def describe(self) -> str:
        return f"JSONL file {self.path}"

    def open(self, state: str | None) -> str | None:
        if not self.path.exists():
            # Created on the first write: a run that fails to start leaves no empty file.
            return None if state is None else "0"
        f = self.path.open("ab+")
        size = f.seek(0, os.SEEK_END)
        committed = size if state is None else min(int(state), size)
        if committed < size:
            f.truncate(committed)
            os.fsync(f.fileno())
        self._file = f
        return str(committed)

    def write(self, rows: Sequence[Row]) -> str | None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab+")
            self._file.seek(0, os.SEEK_END)
        f = self._file
        dumps = json.dumps
        data = "".join(
            dumps(r, default=_json_default, ensure_ascii=False) + "\n" for r in rows
        ).encode()
        start = f.tell()
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            # Cut back what part of the batch reached the file; the batch is written again.
            f.truncate(start)
            raise
        return str(f.tell())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_rows(self) -> Iterator[Row]:
        """Every row written, for ``paceline verify``."""
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


class CallableSink:
    """Any callable taking a list of rows; it should upsert by ``row["id"]``."""

    def __init__(self, fn: Callable[[list[Row]], Any]) -> None:
        self.fn = fn

    def describe(self) -> str:
        return getattr(self.fn, "__qualname__", "callable sink")

    def open(self, state: str | None) -> str | None:
        return None

    def write(self, rows: Sequence[Row]) -> str | None:
        self.fn(list(rows))
        return None

    def close(self) -> None:
        return None


class _NullSink:
    def describe(self) -> str:
        return "no sink"

    def open(self, state: str | None) -> str | None:
        return None

    def write(self, rows: Sequence[Row]) -> str | None:
        return None

    def close(self) -> None:
        return None


def as_sink(sink: Any) -> Sink:
    """Accept a sink object, a callable, or ``None`` (results are not kept)."""
    if sink is None:
        return _NullSink()
    if isinstance(sink, Sink):
        return sink
    if callable(sink):
        return CallableSink(sink)
    raise ConfigError(f"unsupported sink: {type(sink).__name__}")
