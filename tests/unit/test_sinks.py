"""Sinks: rows land once per id, whatever a crash replays."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from paceline.errors import ConfigError, SinkError
from paceline.sinks import CallableSink, JSONLSink, SQLiteSink, as_sink


def table_rows(path: Path, table: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute(f'SELECT * FROM "{table}" ORDER BY id')]
    db.close()
    return rows


def jsonl_ids(path: Path) -> list[str]:
    """The ids of the file's lines; fails if any line is not valid JSON."""
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


# -- SQLiteSink --------------------------------------------------------------------------


def test_sqlite_sink_creates_the_table_on_first_write(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.db"
    sink = SQLiteSink(path, table="summaries")
    assert sink.open(None) is None
    assert sink.write([{"id": "a", "summary": "short", "score": 3}]) is None
    sink.close()
    assert table_rows(path, "summaries") == [{"id": "a", "summary": "short", "score": 3}]


def test_sqlite_sink_upserts_by_id(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    sink = SQLiteSink(path, table="t")
    sink.open(None)
    sink.write([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    sink.write([{"id": "a", "v": 10}])
    sink.close()
    # a replayed batch after a restart, through a new sink object
    again = SQLiteSink(path, table="t")
    again.open(None)
    again.write([{"id": "b", "v": 20}])
    again.close()
    assert table_rows(path, "t") == [{"id": "a", "v": 10}, {"id": "b", "v": 20}]


def test_sqlite_sink_adds_a_column_when_a_new_field_appears(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    sink = SQLiteSink(path, table="t")
    sink.open(None)
    sink.write([{"id": "a", "v": 1}])
    sink.write([{"id": "b", "v": 2, "extra": "new"}, {"id": "c", "other": 3}])
    sink.close()
    assert table_rows(path, "t") == [
        {"id": "a", "v": 1, "extra": None, "other": None},
        {"id": "b", "v": 2, "extra": "new", "other": None},
        {"id": "c", "v": None, "extra": None, "other": 3},
    ]


def test_sqlite_sink_stores_dicts_and_lists_as_json(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    sink = SQLiteSink(path, table="t")
    sink.open(None)
    sink.write([{"id": "a", "tags": ["x", "ÿ"], "meta": {"n": 1}, "none": None}])
    sink.close()
    [row] = table_rows(path, "t")
    assert json.loads(row["tags"]) == ["x", "ÿ"]
    assert json.loads(row["meta"]) == {"n": 1}
    assert row["none"] is None


@pytest.mark.parametrize("table", ["", "my table", "t; DROP TABLE x", '"quoted"', "1st"])
def test_sqlite_sink_refuses_a_table_name_that_is_not_an_identifier(
    tmp_path: Path, table: str
) -> None:
    with pytest.raises(ConfigError, match="table name"):
        SQLiteSink(tmp_path / "r.db", table=table)


def test_sqlite_sink_refuses_a_field_that_is_not_a_column_name(tmp_path: Path) -> None:
    sink = SQLiteSink(tmp_path / "r.db", table="t")
    sink.open(None)
    with pytest.raises(ConfigError, match="bad field"):
        sink.write([{"id": "a", "bad field": 1}])
    sink.close()


# -- JSONLSink ---------------------------------------------------------------------------


def test_jsonl_sink_open_without_state_keeps_the_file_and_returns_its_size(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "old"}\n')
    sink = JSONLSink(path)
    assert sink.open(None) == str(path.stat().st_size)
    sink.close()
    assert path.read_text() == '{"id": "old"}\n'


def test_table_sinks_leave_no_file_until_they_write(tmp_path: Path) -> None:
    sink = SQLiteSink(tmp_path / "out.db", table="rows")
    sink.open(None)
    sink.close()
    assert not (tmp_path / "out.db").exists()
    sink.open(None)
    sink.write([{"id": "a", "v": 1}])
    sink.close()
    assert [r["id"] for r in sink.read_rows()] == ["a"]


def test_jsonl_sink_write_returns_the_new_size(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    sink = JSONLSink(path)
    assert sink.open(None) is None
    assert not path.exists()  # nothing written yet, no empty file left behind
    state = sink.write([{"id": "a", "text": "héllo"}, {"id": "b", "n": [1, 2]}])
    assert state == str(path.stat().st_size)
    state = sink.write([{"id": "c"}])
    assert state == str(path.stat().st_size)
    sink.close()
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"id": "a", "text": "héllo"},
        {"id": "b", "n": [1, 2]},
        {"id": "c"},
    ]


def test_jsonl_sink_reopened_at_its_state_cuts_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JSONLSink(path)
    sink.open(None)
    committed = sink.write([{"id": "a"}, {"id": "b"}])
    sink.close()
    with path.open("ab") as f:  # the crash came in the middle of writing "c"
        f.write(b'{"id": "c", "text": "half')

    sink = JSONLSink(path)
    assert sink.open(committed) == committed
    sink.write([{"id": "c", "text": "whole"}])
    sink.close()

    assert jsonl_ids(path) == ["a", "b", "c"]


def test_jsonl_sink_reopened_at_its_state_drops_a_batch_never_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.jsonl"
    sink = JSONLSink(path)
    sink.open(None)
    committed = sink.write([{"id": "a"}])
    sink.write([{"id": "b"}, {"id": "c"}])  # written, but the store never recorded it
    sink.close()

    sink = JSONLSink(path)
    sink.open(committed)
    sink.write([{"id": "b"}, {"id": "c"}])  # the replay of that batch
    sink.close()

    assert jsonl_ids(path) == ["a", "b", "c"]


# -- others ------------------------------------------------------------------------------


def test_callable_sink_receives_each_batch_as_a_list_of_rows() -> None:
    batches: list[Any] = []
    sink = as_sink(batches.append)
    assert isinstance(sink, CallableSink)
    sink.open(None)
    sink.write(({"id": "a"}, {"id": "b"}))
    sink.write([{"id": "c"}])
    sink.close()
    assert batches == [[{"id": "a"}, {"id": "b"}], [{"id": "c"}]]
    assert all(type(b) is list for b in batches)


def test_as_sink_none_keeps_nothing_and_writes_nowhere(tmp_path: Path) -> None:
    sink = as_sink(None)
    assert sink.open(None) is None
    assert sink.write([{"id": "a"}]) is None
    sink.close()
    assert list(tmp_path.iterdir()) == []
    assert sink.describe() == "no sink"


def test_as_sink_keeps_a_sink_and_rejects_what_is_not_one(tmp_path: Path) -> None:
    sink = JSONLSink(tmp_path / "o.jsonl")
    assert as_sink(sink) is sink
    with pytest.raises(ConfigError, match="unsupported sink: int"):
        as_sink(42)


def test_a_sqlite_sink_on_a_file_that_is_no_database_stops_before_any_item(
    tmp_path: Path,
) -> None:
    precious = tmp_path / "out.db"
    precious.write_text("precious notes\n")
    sink = SQLiteSink(precious, table="t")
    with pytest.raises(SinkError, match="file is not a database"):
        sink.open(None)
    assert precious.read_text() == "precious notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.db"]
