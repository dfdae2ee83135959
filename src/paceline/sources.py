"""Where items come from: JSONL and CSV files, or any Python iterable, read as a stream.

A source yields :class:`Record` objects one at a time, each carrying the position *after*
it, so the store can commit "read up to here" together with the items it inserted. A
restarted run seeks to that position instead of reading the whole source again.

>>> src = JSONL("docs.jsonl", id="doc_id")  # doctest: +SKIP
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError

__all__ = [
    "CSV",
    "JSONL",
    "SQL",
    "IdSpec",
    "IterableSource",
    "Position",
    "Record",
    "Source",
    "as_source",
]

IdSpec = str | Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Position:
    """How far a source has been read: a byte offset (or record count) and a line number."""

    offset: int = 0
    line: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from a source: an item, or the reason its line is not one."""

    line: int
    id: str | None
    data: dict[str, Any] | None
    error: str | None
    after: Position
    priority: float = 0.0
    skip: bool = False  # the job's ``needs`` said this item needs no work


@runtime_checkable
class Source(Protocol):
    """Anything that can stream records from a position."""

    def describe(self) -> str:
        """A short human name, for messages."""
        ...

    def read(self, start: Position) -> Iterator[Record]:
        """Yield records from ``start`` on (``Position()`` is the beginning)."""
        ...


def _item_id(data: Mapping[str, Any], id_spec: IdSpec) -> str | None:
    value = id_spec(data) if callable(id_spec) else data.get(id_spec)
    if value is None or value == "":
        return None
    return str(value)


def _missing_id(id_spec: IdSpec) -> str:
    name = id_spec if isinstance(id_spec, str) else "id function"
    return f"no id: field {name!r} is missing or empty"


class _FileSource:
    def __init__(self, path: str | os.PathLike[str], *, id: IdSpec = "id") -> None:
        self.path = Path(path)
        self.id = id

    def describe(self) -> str:
        return str(self.path)

    def _open(self) -> Any:
        try:
            return self.path.open("rb")
        except FileNotFoundError:
            raise ConfigError(f"source file not found: {self.path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read source {self.path}: {exc.strerror}") from None

    def size(self) -> int:
        """Bytes in the file now (for progress estimates)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0


class JSONL(_FileSource):
    """One JSON object per line; ``id`` names the field (or a function) giving the item id.

    Blank lines are skipped; a line that is not a JSON object, or has no id, becomes a
    failed item named after its line number, and the rest go on.
    """

    def read(self, start: Position) -> Iterator[Record]:
        with self._open() as f:
            if start.offset > self.size():
                start = Position()  # the file was replaced by a shorter one: read it again
            f.seek(start.offset)
            offset, line = start.offset, start.line
            for raw in f:
                offset += len(raw)
                line += 1
                after = Position(offset, line)
                if not raw.strip():
                    continue
                try:
                    data = json.loads(raw)
                except ValueError as exc:
                    yield Record(line, None, None, f"invalid JSON: {_short(exc)}", after)
                    continue
                if not isinstance(data, dict):
                    kind = type(data).__name__
                    yield Record(line, None, None, f"not a JSON object but {kind}", after)
                    continue
                item_id = _item_id(data, self.id)
                error = None if item_id is not None else _missing_id(self.id)
                yield Record(line, item_id, data, error, after)


class CSV(_FileSource):
    """A CSV file with a header row; ``id`` names the column giving the item id.

    Values stay strings. A row with more or fewer fields than the header becomes a failed
    item named after its line number.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        id: IdSpec = "id",
        delimiter: str = ",",
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(path, id=id)
        self.delimiter = delimiter
        self.encoding = encoding

    def read(self, start: Position) -> Iterator[Record]:
        with self._open() as f:
            if start.offset > self.size():
                start = Position()
            consumed = [0, 0]  # bytes and physical lines handed to the csv reader so far

            def lines() -> Iterator[str]:
                # utf-8-sig drops a byte order mark before the csv module sees the header
                utf8 = codecs.lookup(self.encoding).name == "utf-8"
                decoder = codecs.getincrementaldecoder("utf-8-sig" if utf8 else self.encoding)()
                for raw in f:
                    consumed[0] += len(raw)
                    consumed[1] += 1
                    yield decoder.decode(raw)

            reader = csv.reader(lines(), delimiter=self.delimiter)
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ConfigError(f"{self.path}: unreadable CSV header: {exc}") from None
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            if start.offset > consumed[0]:
                f.seek(start.offset)
                consumed[0], consumed[1] = start.offset, start.line
                reader = csv.reader(lines(), delimiter=self.delimiter)
            while True:
                first_line = consumed[1] + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    after = Position(consumed[0], consumed[1])
                    yield Record(first_line, None, None, f"malformed CSV: {exc}", after)
                    continue
                after = Position(consumed[0], consumed[1])
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    error = f"expected {len(header)} fields, found {len(row)}"
                    yield Record(first_line, None, None, error, after)
                    continue
                data = dict(zip(header, row, strict=True))
                item_id = _item_id(data, self.id)
                missing = None if item_id is not None else _missing_id(self.id)
                yield Record(first_line, item_id, data, missing, after)


class IterableSource:
    """Any iterable of dicts (or a function returning one, so a rerun can read it again).

    The position is a record count: a restarted run skips that many records.
    """

    def __init__(
        self,
        records: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]],
        *,
        id: IdSpec = "id",
    ) -> None:
        self.records = records
        self.id = id
        self._taken = 0  # records already drawn from a one-shot iterator in this process

    def describe(self) -> str:
        return "Python iterable"

    def read(self, start: Position) -> Iterator[Record]:
        records = self.records() if callable(self.records) else self.records
        # A generator given directly: what an earlier read drew from it is gone.
        one_shot = not callable(self.records) and iter(records) is records
        skip = max(0, start.offset - self._taken) if one_shot else start.offset
        count = start.offset
        for data in itertools.islice(records, skip, None):
            if one_shot:
                self._taken = count + 1
            count += 1
            after = Position(count, count)
            if not isinstance(data, Mapping):
                error = f"not a dict but {type(data).__name__}"
                yield Record(count, None, None, error, after)
                continue
            item_id = _item_id(data, self.id)
            error = None if item_id is not None else _missing_id(self.id)
            yield Record(count, item_id, dict(data), error, after)


def as_source(source: Any) -> Source:
    """Accept a source object, or wrap an iterable of dicts."""
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".csv":
            return CSV(path)
        return JSONL(path)
    if callable(source) or isinstance(source, Iterable):
        return IterableSource(source)
    raise ConfigError(f"unsupported source: {type(source).__name__}")


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


class SQL:
    """The rows of a query on SQLite (a file path) or PostgreSQL (a ``postgresql://`` DSN),
    streamed: PostgreSQL through a server-side cursor, SQLite row by row.

    The position is a row count: a restarted run runs the query again and skips the rows
    already read, so the query should return rows in a stable order (``ORDER BY``).

    >>> SQL("postgresql://localhost/app",
    ...     "SELECT id, email FROM users ORDER BY id")  # doctest: +SKIP
    """

    def __init__(
        self,
        dsn_or_path: str | os.PathLike[str],
        query: str,
        *,
        id: IdSpec = "id",
        params: Sequence[Any] = (),
    ) -> None:
        self.target = str(dsn_or_path)
        self.query = query
        self.id = id
        self.params = tuple(params)

    @property
    def postgres(self) -> bool:
        return self.target.startswith(("postgresql://", "postgres://"))

    def describe(self) -> str:
        where = "PostgreSQL" if self.postgres else f"SQLite {self.target}"
        return f"query on {where}"

    def _rows(self) -> Iterator[dict[str, Any]]:
        if self.postgres:
            from .postgres import connect

            conn = connect(self.target)  # a clear error when the postgres extra is missing
            import psycopg

            try:
                with conn.transaction(), conn.cursor(name="paceline_source") as cur:
                    cur.itersize = 2000
                    try:
                        cur.execute(self.query, self.params)
                    except psycopg.Error as exc:
                        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                        raise ConfigError(f"source query failed: {first}") from None
                    names = [d.name for d in cur.description or []]
                    for values in cur:
                        yield dict(zip(names, values, strict=True))
            finally:
                conn.close()
            return
        if not Path(self.target).exists():
            raise ConfigError(f"source database not found: {self.target}")
        db = sqlite3.connect(f"file:{self.target}?mode=ro", uri=True)
        try:
            try:
                cursor = db.execute(self.query, self.params)
            except sqlite3.Error as exc:
                raise ConfigError(f"source query failed: {exc}") from None
            names = [d[0] for d in cursor.description]
            for values in cursor:
                yield dict(zip(names, values, strict=True))
        finally:
            db.close()

    def read(self, start: Position) -> Iterator[Record]:
        count = start.offset
        for data in itertools.islice(self._rows(), start.offset, None):
            count += 1
            after = Position(count, count)
            item_id = _item_id(data, self.id)
            error = None if item_id is not None else _missing_id(self.id)
            yield Record(count, item_id, data, error, after)
