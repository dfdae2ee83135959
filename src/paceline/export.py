"""``paceline export``: every item of a job, one per line, with its result row.

Items stream from the store in the order read; the sink's rows (table and JSONL sinks,
read back) are first spilled into a private temporary database keyed by id, so the join
takes constant memory for any number of items.

>>> for line in export_lines(job, fmt="jsonl"):      # doctest: +SKIP
...     print(line)
{"id": "doc-1", "status": "done", "attempts": 1, "error": null, "line": 1, "result": {...}}
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .item import Status
from .ops import items

if TYPE_CHECKING:
    from .job import Job

__all__ = ["FORMATS", "export_lines"]

FORMATS = ("jsonl", "csv")
BASE_FIELDS = ("id", "status", "attempts", "error", "line")


class _Rows:
    """The sink's rows by id, in a temporary on-disk database."""

    def __init__(self, job: Job) -> None:
        self.db = sqlite3.connect("")  # a private temporary database on disk
        self.db.execute("CREATE TABLE r (id TEXT PRIMARY KEY, body TEXT)")
        self.fields: dict[str, None] = {}
        read_rows = getattr(job.sink, "read_rows", None)
        if read_rows is None:
            return
        rows = iter(read_rows())
        while batch := list(itertools.islice(rows, 5000)):
            for row in batch:
                self.fields.update(dict.fromkeys(k for k in row if k != "id"))
            self.db.executemany(
                "INSERT OR REPLACE INTO r VALUES (?, ?)",
                [(str(r.get("id")), json.dumps(r, default=str)) for r in batch],
            )

    def get(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" for _ in chunk)
            for item_id, body in self.db.execute(
                f"SELECT id, body FROM r WHERE id IN ({marks})", chunk
            ):
                row = json.loads(body)
                row.pop("id", None)
                found[item_id] = row
        return found

    def close(self) -> None:
        self.db.close()


def export_lines(
    job: Job,
    store: str | os.PathLike[str] | None = None,
    *,
    statuses: Sequence[str] = (),
    fmt: str = "jsonl",
) -> Iterator[str]:
    """The job's items as lines of JSONL (``result`` holds the sink row) or CSV (the
    row's fields as columns after id, status, attempts, error and line)."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: use jsonl or csv")
    for status in statuses:
        if status not in {s.value for s in Status}:
            known = ", ".join(s.value for s in Status)
            raise ConfigError(f"unknown status {status!r}: use one of {known}")
    rows = _Rows(job)
    try:
        fields = list(rows.fields)
        if fmt == "csv":
            # A result field named like an item's own column is told apart: result.status.
            named = [f"result.{f}" if f in BASE_FIELDS else f for f in fields]
            yield _csv_line([*BASE_FIELDS, *named])
        stream = items(job, store, statuses=statuses)
        while batch := list(itertools.islice(stream, 1000)):
            results = rows.get([i.id for i in batch])
            for item in batch:
                base = {
                    "id": item.id,
                    "status": item.status.value,
                    "attempts": item.attempts,
                    "error": item.error,
                    "line": item.line,
                }
                result = results.get(item.id)
                if fmt == "jsonl":
                    yield json.dumps({**base, "result": result}, ensure_ascii=False, default=str)
                else:
                    values = [*base.values(), *((result or {}).get(f) for f in fields)]
                    yield _csv_line(values)
    finally:
        rows.close()


def _csv_line(values: Sequence[Any]) -> str:
    out = io.StringIO()
    cells = [
        "" if v is None else (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
        for v in values
    ]
    # Quoting follows the line terminator's characters: with "\r\n", a value holding a
    # line break is quoted (it stays one record); the caller ends the line.
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()[:-2]
