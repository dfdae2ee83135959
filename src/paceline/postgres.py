"""PostgreSQL as a sink (upsert by item id) and as a source (server-side cursor).

Needs the ``postgres`` extra: ``pip install 'paceline[postgres]'``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import ConfigError

__all__ = ["PostgresSink", "connect"]

Row = dict[str, Any]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def connect(dsn: str, **options: Any) -> Any:
    """A psycopg connection, or a clear error when the extra is missing or the DSN fails."""
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "PostgreSQL needs the postgres extra: pip install 'paceline[postgres]'"
        ) from None
    try:
        return psycopg.connect(dsn, **options)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to PostgreSQL: {first}") from None


def _pg_type(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE PRECISION"
    if isinstance(value, (dict, list)):
        return "JSONB"
    return "TEXT"


def _pg_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return value


class PostgresSink:
    """A PostgreSQL table, upserted by item id (``INSERT … ON CONFLICT (id) DO UPDATE``).

    The table is created on the first write, its column types taken from the first row
    (text, bigint, double precision, boolean, jsonb); new fields become new columns.
    """

    def __init__(self, dsn: str, *, table: str, schema: str | None = None) -> None:
        for name in (table, schema):
            if name is not None and not _NAME.match(name):
                raise ConfigError(f"PostgresSink: {name!r} is not a plain identifier")
        self.dsn = dsn
        self.table = table
        self.schema = schema
        self.qualified = f'"{schema}"."{table}"' if schema else f'"{table}"'
        self._conn: Any = None
        self._columns: set[str] = set()

    def describe(self) -> str:
        return f"PostgreSQL table {self.table!r}"

    def open(self, state: str | None) -> str | None:
        self._conn = connect(self.dsn)
        self._columns = set()
        return None

    def _ensure_columns(self, conn: Any, rows: Sequence[Row]) -> None:
        cur = conn.cursor()
        new = {name: value for row in rows for name, value in row.items()}
        if self._columns and not set(new) - self._columns:
            return
        # Workers creating the table or its columns at once take turns (until commit).
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.qualified,))
        if not self._columns:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {self.qualified} (id TEXT PRIMARY KEY)")
            cur.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "AND table_schema = coalesce(%s, current_schema())",
                (self.table, self.schema),
            )
            self._columns = {r[0] for r in cur.fetchall()}
        for name, value in new.items():
            if name not in self._columns:
                if not _NAME.match(name):
                    raise ConfigError(f"result field {name!r} is not a valid column name")
                cur.execute(
                    f'ALTER TABLE {self.qualified} ADD COLUMN IF NOT EXISTS "{name}" '
                    f"{_pg_type(value)}"
                )
                self._columns.add(name)

    def write_in(self, conn: Any, rows: Sequence[Row]) -> None:
        """Upsert ``rows`` on ``conn`` inside its open transaction (the store's, when the
        table is in the store's database: rows and ``done`` marks then commit together)."""
        groups: dict[tuple[str, ...], list[Row]] = {}
        for row in rows:
            groups.setdefault(tuple(row), []).append(row)
        try:
            self._ensure_columns(conn, rows)
            cur = conn.cursor()
            for names, group in groups.items():
                cols = ", ".join(f'"{n}"' for n in names)
                marks = ", ".join("%s" for _ in names)
                updates = ", ".join(f'"{n}" = EXCLUDED."{n}"' for n in names if n != "id")
                action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
                cur.executemany(
                    f"INSERT INTO {self.qualified} ({cols}) VALUES ({marks}) "
                    f"ON CONFLICT (id) {action}",
                    [[_pg_value(r[n]) for n in names] for r in group],
                )
        except Exception:
            self._columns = set()  # the transaction rolls back any ALTER: look again
            raise

    def write(self, rows: Sequence[Row]) -> str | None:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)  # a dropped connection: this batch goes again
            self._columns = set()
        with self._conn.transaction():
            self.write_in(self._conn, rows)
        return None

    def read_rows(self) -> Iterator[Row]:
        """Every row written, for ``paceline verify`` (a server-side cursor)."""
        conn = connect(self.dsn)
        try:
            with conn.cursor(name="paceline_verify") as cur:
                try:
                    cur.execute(f"SELECT * FROM {self.qualified}")
                except Exception:
                    return
                names = [d.name for d in cur.description or []]
                for values in cur:
                    yield dict(zip(names, values, strict=True))
        finally:
            conn.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
