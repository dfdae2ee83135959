"""Where items come from: JSONL and CSV files, SQL queries, or any Python iterable, as a stream.

A source yields :class:`Record` objects one at a time, each carrying the position *after*
it, so the store can commit "read up to here" together with the items it inserted. A
restarted run seeks to that position instead of reading the whole source again.

Whatever one line holds, it costs at most its own item: a line that cannot become an item
(undecodable bytes, a NUL character, nesting deeper than :data:`MAX_DEPTH`, a line longer
than ``max_line_bytes``, an id that is a list or longer than :data:`MAX_ID_LENGTH`, text
that UTF-8 cannot encode) is a record with an ``error``, which the store keeps as a failed
item named after its line, and reading goes on. So a record without an error always has a
string id and data that ``json.dumps(data, default=str)`` writes and UTF-8 encodes. Errors
describe the problem ("invalid UTF-8 at byte 17 of the line"), never quote the line: it may
hold a secret. What stops a source before any item is a configuration error
(:class:`~paceline.ConfigError`): a missing file, or a CSV header or SQL query without the
id column.

>>> src = JSONL("docs.jsonl", id="doc_id")  # doctest: +SKIP
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from ._records import MAX_DEPTH, MAX_ID_LENGTH, IdSpec, check
from .errors import ConfigError

__all__ = [
    "CSV",
    "JSONL",
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_LINE_BYTES",
    "SQL",
    "IdSpec",
    "IterableSource",
    "Position",
    "Record",
    "Source",
    "as_source",
]

MAX_LINE_BYTES = 8 * 2**20
"""Default longest line (a CSV row: all its lines) read as an item; longer ones fail unread."""


@dataclass(frozen=True, slots=True)
class Position:
    """How far a source has been read: a byte offset (or record count) and a line number."""

    offset: int = 0
    line: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from a source: an item, or the reason its line is not one.

    Without an ``error``, ``id`` is a string and ``data`` a dict fit for the store; with
    one, both are ``None``.
    """

    line: int
    id: str | None
    data: dict[str, Any] | None
    error: str | None
    after: Position
    priority: float = 0.0
    skip: bool = False  # the job's ``needs`` said this item needs no work
    #: Where reading must start to meet this record again (set by the engine's ingest).
    start: Position | None = None


@runtime_checkable
class Source(Protocol):
    """Anything that can stream records from a position."""

    def describe(self) -> str:
        """A short human name, for messages."""
        ...

    def read(self, start: Position) -> Iterator[Record]:
        """Yield records from ``start`` on (``Position()`` is the beginning)."""
        ...


# -- what makes a record an item ------------------------------------------------------------


def _record(
    line: int, data: dict[str, Any], id_spec: IdSpec, after: Position, *, text: bool = False
) -> Record:
    """The record of one line's data: an item, or a failed line saying why it is not one."""
    item_id, error = check(data, id_spec, text=text)
    if item_id is None:
        return Record(line, None, None, error, after)
    return Record(line, item_id, data, None, after)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def _too_long(what: str, size: int, limit: int) -> str:
    return f"{what} of {size:,} bytes is over the limit of {limit:,} (max_line_bytes)"


def _rest_of_line(f: IO[bytes], head: bytes, feed: Callable[[bytes], None] | None = None) -> int:
    """Read past the rest of a line whose first ``head`` bytes were read; its length."""
    size = 0
    while not head.endswith(b"\n"):
        head = f.readline(2**20)  # a megabyte at a time: a huge line never sits in memory
        if not head:
            break
        size += len(head)
        if feed is not None:
            feed(head)
    return size


# -- files ------------------------------------------------------------------------------------

_BOM = codecs.BOM_UTF8


class _FileSource:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        id: IdSpec = "id",
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.id = id
        self.max_line_bytes = max_line_bytes

    def describe(self) -> str:
        return str(self.path)

    def _open(self) -> IO[bytes]:
        if not isinstance(self.max_line_bytes, int) or self.max_line_bytes < 1:
            raise ConfigError(f"max_line_bytes must be a positive number of bytes for {self.path}")
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

    Blank lines are skipped; a line that is not a JSON object in UTF-8, has no usable id,
    or is longer than ``max_line_bytes`` (8 MiB by default; such a line is skipped unread),
    becomes a failed item named after its line number, and the rest go on.
    """

    def read(self, start: Position) -> Iterator[Record]:
        limit = self.max_line_bytes
        with self._open() as f:
            if start.offset > self.size():
                start = Position()  # the file was replaced by a shorter one: read it again
            f.seek(start.offset)
            offset, line = start.offset, start.line
            while raw := f.readline(limit + 1):
                at_start = offset == 0
                size = len(raw)
                if size > limit:
                    size += _rest_of_line(f, raw)
                offset += size
                line += 1
                after = Position(offset, line)
                if size > limit:
                    yield Record(line, None, None, _too_long("line", size, limit), after)
                    continue
                if not raw.strip():
                    continue
                yield self._parse(raw, line, after, at_start)

    def _parse(self, raw: bytes, line: int, after: Position, at_start: bool) -> Record:
        skipped = len(_BOM) if at_start and raw.startswith(_BOM) else 0
        try:
            text = raw[skipped:].decode("utf-8")
        except UnicodeDecodeError as exc:
            where = skipped + exc.start + 1
            return Record(line, None, None, f"invalid UTF-8 at byte {where} of the line", after)
        try:
            data = json.loads(text)
        except RecursionError:
            return Record(line, None, None, f"nested deeper than {MAX_DEPTH} levels", after)
        except ValueError as exc:  # the decoder's messages give positions, never content
            return Record(line, None, None, f"invalid JSON: {_short(exc)}", after)
        if not isinstance(data, dict):
            kind = type(data).__name__
            return Record(line, None, None, f"not a JSON object but {kind}", after)
        return _record(line, data, self.id, after)


class CSV(_FileSource):
    """A CSV file with a header row; ``id`` names the column giving the item id.

    Values stay strings. A row with more or fewer fields than the header, bytes that are
    not in ``encoding``, a NUL character, or more than ``max_line_bytes`` (all its lines)
    becomes a failed item named after the line it starts on. A quoted field whose closing
    quote never comes fails its row alone; reading goes on with the next line. A header
    without the ``id`` column is a :class:`~paceline.ConfigError` before any row is read.

    A quoted field may span lines; a row that does so must parse cleanly (each closing
    quote followed by a delimiter or the end of the line). Otherwise, as when the closing
    quote never comes, the quote on its first line is taken for a stray one that swallowed
    the rows after it: that line alone fails, and reading goes on with the next line.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        id: IdSpec = "id",
        delimiter: str = ",",
        encoding: str = "utf-8",
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        super().__init__(path, id=id, max_line_bytes=max_line_bytes)
        self.delimiter = delimiter
        self.encoding = encoding

    def _check_options(self) -> str:
        """The codec's name, once the options are known to work."""
        try:
            codec = codecs.lookup(self.encoding).name
        except (LookupError, TypeError):
            raise ConfigError(f"unknown encoding {self.encoding!r} for {self.path}") from None
        if codec == "utf-8-sig":
            codec = "utf-8"  # a byte order mark is dropped anyway
        if '\n,"'.encode(codec, errors="replace") != b'\n,"':
            raise ConfigError(
                f"encoding {self.encoding!r} is not read line by line: convert {self.path} to UTF-8"
            )
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1:
            raise ConfigError(f"the CSV delimiter must be one character, not {self.delimiter!r}")
        if self.delimiter in '"\r\n':
            raise ConfigError(f"the CSV delimiter cannot be {self.delimiter!r}")
        return codec

    def read(self, start: Position) -> Iterator[Record]:
        codec = self._check_options()
        # A row is at most max_line_bytes long, so no field of it is over the csv module's
        # limit (128 KiB by default, process-wide: it is only ever raised here).
        if csv.field_size_limit() < self.max_line_bytes:
            csv.field_size_limit(self.max_line_bytes)
        with self._open() as f:
            if start.offset > self.size():
                start = Position()
            rows = _CsvRows(f, self.delimiter, codec, self.max_line_bytes)
            header = self._header(rows.next())
            if header is None:
                return  # an empty file
            if start.offset > rows.offset:
                rows.seek(start)
            while (raw := rows.next()) is not None:
                if raw.error is not None or raw.lines is None:
                    yield Record(raw.line, None, None, raw.error, raw.after)
                    continue
                several = len(raw.lines) > 1
                row, error = self._parse(raw.lines, strict=several)
                if several and error is not None:
                    # A quoted field over several lines whose closing quote is not followed by
                    # a delimiter or the line's end: a stray quote that a later one happened
                    # to close (the next rows' own quotes). Fail its first line alone and read
                    # on from the next, as for a quote that never closes.
                    rows.seek(raw.first)
                    yield Record(raw.line, None, None, _unclosed(raw.after.line), raw.first)
                    continue
                if row is None or row == [""]:  # a blank line
                    if error is not None:
                        yield Record(raw.line, None, None, error, raw.after)
                    continue
                if len(row) != len(header):
                    error = f"expected {len(header)} fields, found {len(row)}"
                    yield Record(raw.line, None, None, error, raw.after)
                    continue
                data = dict(zip(header, row, strict=True))
                yield _record(raw.line, data, self.id, raw.after, text=True)

    def _parse(self, lines: list[str], strict: bool = False) -> tuple[list[str] | None, str | None]:
        try:
            rows = list(csv.reader(lines, delimiter=self.delimiter, strict=strict))
        except csv.Error as exc:
            if "new-line character" in str(exc):
                return None, "malformed CSV: a line break (CR) inside an unquoted field"
            return None, f"malformed CSV: {_short(exc)}"
        if len(rows) != 1:  # the row splitter and the csv module disagree: trust neither
            return None, "malformed CSV: the row does not end where it should"
        return (rows[0] or None), None

    def _header(self, raw: _RawRow | None) -> list[str] | None:
        if raw is None:
            return None
        where = f"{self.path}: the CSV header (line {raw.line})"
        if raw.error is not None or raw.lines is None:
            raise ConfigError(f"{where} is unreadable: {raw.error}")
        header, error = self._parse(raw.lines)
        if error is not None:
            raise ConfigError(f"{where} is unreadable: {error}")
        header = header or []
        if any("\x00" in name for name in header):
            raise ConfigError(f"{where} has a NUL character in a column name")
        if isinstance(self.id, str) and self.id not in header:
            raise ConfigError(f"{where} has no {self.id!r} column for the id; {_columns(header)}")
        return header


def _columns(header: list[str]) -> str:
    if not header or header == [""]:
        return "it names no columns"
    shown = [repr(name if len(name) <= 40 else name[:39] + "…") for name in header[:20]]
    more = f", … ({len(header)} in all)" if len(header) > 20 else ""
    return f"the columns are {', '.join(shown)}{more}"


@dataclass(frozen=True, slots=True)
class _RawRow:
    line: int  # where the row starts
    first: Position  # after its first line
    after: Position  # after its last line
    lines: list[str] | None  # its text, line by line; None when it is not kept (too long)
    error: str | None


class _CsvRows:
    """Cuts a CSV file into rows, by line, before any field is parsed.

    The csv module reading a file itself would swallow the rest of the file into the field
    of an unterminated quote, stop at the first undecodable byte, and hold a row of any
    size in memory. Here each line is decoded alone (an error fails its row only), a row
    over the limit is read past without being kept, and a row still inside quotes at the end
    of the file is failed alone: reading starts again on the line after its first.
    """

    def __init__(self, f: IO[bytes], delimiter: str, codec: str, limit: int) -> None:
        self.f = f
        self.quotes = _Quotes(delimiter)
        self.codec = codec
        self.limit = limit
        self.offset = 0
        self.line = 0

    def seek(self, position: Position) -> None:
        self.f.seek(position.offset)
        self.offset, self.line = position.offset, position.line

    def next(self) -> _RawRow | None:
        """The next row, or ``None`` at the end of the file."""
        quotes = self.quotes
        quotes.state = quotes.START
        lines: list[str] | None = []
        first: Position | None = None  # after the row's first line
        size, bad_byte = 0, None
        while True:
            raw = self.f.readline(self.limit + 1)
            if not raw:
                if first is None:
                    return None
                self.seek(first)  # the quote never closed: fail this row's first line alone
                return _RawRow(first.line, first, first, None, _unclosed(None))
            length = len(raw)
            if length > self.limit:  # a line over the limit: scan it for quotes, keep nothing
                length = self._scan_long_line(raw, quotes)
                lines = None
            else:
                skipped = len(_BOM) if self.offset == 0 and raw.startswith(_BOM) else 0
                try:
                    text = raw[skipped:].decode(self.codec)
                except UnicodeDecodeError as exc:
                    bad_byte = bad_byte or size + skipped + exc.start + 1
                    text = raw[skipped:].decode(self.codec, errors="replace")
                quotes.feed(text)
                if lines is not None:
                    lines.append(text)
            size += length
            self.offset += length
            self.line += 1
            first = first or Position(self.offset, self.line)
            if size > self.limit:
                lines = None
            if not quotes.open:
                error = None
                if size > self.limit:
                    error = _too_long("row", size, self.limit)
                elif bad_byte is not None:
                    name = "UTF-8" if self.codec == "utf-8" else self.codec
                    error = f"invalid {name} at byte {bad_byte} of the row"
                return _RawRow(first.line, first, Position(self.offset, self.line), lines, error)

    def _scan_long_line(self, head: bytes, quotes: _Quotes) -> int:
        decoder = codecs.getincrementaldecoder(self.codec)(errors="replace")

        def feed(chunk: bytes) -> None:
            quotes.feed(decoder.decode(chunk))

        feed(head)
        size = len(head) + _rest_of_line(self.f, head, feed)
        quotes.feed(decoder.decode(b"", final=True))
        return size


def _unclosed(closed_on: int | None) -> str:
    how = (
        "never closes"
        if closed_on is None
        else f"runs to line {closed_on} and does not end as a field should"
    )
    return (
        f"unterminated quote: a quoted field opened on this line {how}, so this line is "
        "failed alone and reading goes on with the next (check the rows after it)"
    )


class _Quotes:
    """Whether CSV text fed so far stops inside a quoted field, as the csv module reads it
    (the ``excel`` dialect): a quote opens a field only at its start, ``""`` inside quotes
    is a quote, and a line break inside quotes belongs to the field."""

    __slots__ = ("delimiter", "opening", "state")

    START, FIELD, QUOTED, CLOSING = range(4)  # CLOSING: a quote seen inside quotes

    def __init__(self, delimiter: str) -> None:
        self.delimiter = delimiter
        self.opening = re.compile(f'(?<=[{re.escape(delimiter)}\n])"')
        self.state = self.START

    @property
    def open(self) -> bool:
        return self.state == self.QUOTED

    def feed(self, text: str) -> None:
        state, i, n, ends = self.state, 0, len(text), (self.delimiter, "\n")
        while i < n:
            if state == self.QUOTED:
                j = text.find('"', i)
                if j < 0:
                    break
                state, i = self.CLOSING, j + 1
            elif state == self.CLOSING:
                c = text[i]
                state = self.QUOTED if c == '"' else self.START if c in ends else self.FIELD
                i += 1
            elif state == self.START and text[i] == '"':
                state, i = self.QUOTED, i + 1
            else:  # outside quotes, a quote opens a field only right after a delimiter or line
                found = self.opening.search(text, i)
                if found is None:
                    state, i = (self.START if text[-1] in ends else self.FIELD), n
                else:
                    state, i = self.QUOTED, found.end()
        self.state = state


# -- iterables and queries --------------------------------------------------------------------


class IterableSource:
    """Any iterable of dicts (or a function returning one, so a rerun can read it again).

    The position is a record count: a restarted run skips that many records. A record that
    is not a dict, or cannot be stored, is a failed item named after its number.
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
            try:
                copy = dict(data)
            except Exception as exc:  # a mapping that cannot list itself
                error = f"the record cannot be read ({type(exc).__name__})"
                yield Record(count, None, None, error, after)
                continue
            yield _record(count, copy, self.id, after)


def read_back(
    source: Source, wanted: Sequence[tuple[str, int | None, int | None]]
) -> dict[str, Record]:
    """Read items again from the source: ``wanted`` holds (id, start offset, line) as the
    store kept them; returns the records found by id (an id missing from the answer is no
    longer where it was: the source changed).

    Files seek to each item's start; a query is run once, filtered by its id column; an
    iterable is read again from its start (a one-shot iterator cannot be: ConfigError).
    """
    if isinstance(source, SQL) and isinstance(source.id, str):
        return source.lookup([item_id for item_id, _, _ in wanted])
    if isinstance(source, IterableSource) and not callable(source.records):
        raise ConfigError(
            "the source is a one-shot iterator: items cannot be read from it again "
            "(pass a function returning the iterable)"
        )
    found: dict[str, Record] = {}
    for item_id, offset, line in wanted:
        if offset is None:
            continue
        start = Position(offset, max(0, (line or 1) - 1))
        for record in itertools.islice(source.read(start), 3):  # blank lines may lead
            if record.id == item_id:
                found[item_id] = record
                break
    return found


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


# SQLite text that is not UTF-8 would stop the cursor for good; read it with its bad bytes
# as lone surrogates instead, and let the record check fail that row alone.
_sqlite_text = partial(str, encoding="utf-8", errors="surrogateescape")


class SQL:
    """The rows of a query on SQLite (a file path) or PostgreSQL (a ``postgresql://`` DSN),
    streamed: PostgreSQL through a server-side cursor, SQLite row by row.

    The position is a row count: a restarted run runs the query again and skips the rows
    already read, so the query should return rows in a stable order (``ORDER BY``). A row
    with no usable id, or values that cannot be stored, is a failed item named after its
    row number; a query without the id column is a :class:`~paceline.ConfigError`.

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

    def _check_columns(self, names: list[str]) -> None:
        if isinstance(self.id, str) and self.id not in names:
            raise ConfigError(
                f"the source query has no {self.id!r} column for the id; {_columns(names)}"
            )

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
                    self._check_columns(names)
                    for values in cur:
                        yield dict(zip(names, values, strict=True))
            finally:
                conn.close()
            return
        if not Path(self.target).exists():
            raise ConfigError(f"source database not found: {self.target}")
        db = sqlite3.connect(f"file:{self.target}?mode=ro", uri=True)
        db.text_factory = _sqlite_text
        try:
            try:
                cursor = db.execute(self.query, self.params)
            except sqlite3.Error as exc:
                raise ConfigError(f"source query failed: {exc}") from None
            names = [d[0] for d in cursor.description or []]
            self._check_columns(names)
            for values in cursor:
                yield dict(zip(names, values, strict=True))
        finally:
            db.close()

    def read(self, start: Position) -> Iterator[Record]:
        count = start.offset
        for data in itertools.islice(self._rows(), start.offset, None):
            count += 1
            yield _record(count, data, self.id, Position(count, count))

    def lookup(self, ids: Sequence[str]) -> dict[str, Record]:
        """The rows of these ids, by one run of the query filtered on its id column."""
        assert isinstance(self.id, str)
        found: dict[str, Record] = {}
        column = '"' + self.id.replace('"', '""') + '"'
        mark = "%s" if self.postgres else "?"
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ", ".join(mark for _ in chunk)
            inner = self.query.strip().rstrip(";")
            query = (
                f"SELECT * FROM ({inner}) AS paceline_source "
                f"WHERE CAST({column} AS TEXT) IN ({marks})"
            )
            rows = SQL(self.target, query, id=self.id, params=(*self.params, *chunk))
            for record in rows.read(Position()):
                if record.id is not None:
                    found[record.id] = record
        return found
