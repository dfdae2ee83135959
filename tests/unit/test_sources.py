"""Sources: records with their line numbers and errors, and exact resumption from a position."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paceline.errors import ConfigError
from paceline.sources import CSV, JSONL, IterableSource, Position, Record, as_source


def read_all(source: Any, start: Position | None = None) -> list[Record]:
    return list(source.read(start or Position()))


def jsonl_lines(*objs: Any) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


# -- JSONL -------------------------------------------------------------------------------


def test_jsonl_reports_bad_lines_by_line_number_and_keeps_the_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": "a", "v": 1}\n'  # 1
        "\n"  # 2: blank, skipped
        '{"id": "b", \n'  # 3: invalid JSON
        "[1, 2]\n"  # 4: not an object
        '{"v": 5}\n'  # 5: no id
        "   \n"  # 6: blank (spaces), skipped
        '{"id": "c", "v": 3}\n'  # 7
    )
    records = read_all(JSONL(path))

    assert [r.line for r in records] == [1, 3, 4, 5, 7]
    good = [r for r in records if r.error is None]
    assert [(r.line, r.id, r.data) for r in good] == [
        (1, "a", {"id": "a", "v": 1}),
        (7, "c", {"id": "c", "v": 3}),
    ]
    errors = {r.line: r.error for r in records if r.error is not None}
    assert errors[3] is not None
    assert errors[3].startswith("invalid JSON")
    assert errors[4] == "not a JSON object but list"
    assert errors[5] is not None
    assert "'id'" in errors[5]
    assert all(r.id is None for r in records if r.error is not None)
    assert records[-1].after == Position(path.stat().st_size, 7)


def test_jsonl_id_can_name_another_field_and_numbers_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl_lines({"doc_id": 7, "id": "ignored"}, {"doc_id": ""}, {"x": 1}))
    records = read_all(JSONL(path, id="doc_id"))
    assert records[0].id == "7"
    assert records[0].error is None
    for record in records[1:]:
        assert record.id is None
        assert record.error is not None
        assert "'doc_id'" in record.error


def test_jsonl_id_can_be_a_function_of_the_record(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl_lines({"repo": "a/b", "n": 1}, {"repo": "a/b", "n": 2}, {"n": 3}))

    def key(data: Any) -> Any:
        return f"{data['repo']}#{data['n']}" if "repo" in data else None

    records = read_all(JSONL(path, id=key))
    assert [r.id for r in records] == ["a/b#1", "a/b#2", None]
    assert records[2].error is not None
    assert "id function" in records[2].error


def test_jsonl_resuming_after_any_record_yields_exactly_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        jsonl_lines({"id": "a"}, {"id": "b"})
        + "\n"
        + "not json\n"
        + jsonl_lines({"id": "c"}, {"id": "d", "text": "ünïcödé"})
    )
    source = JSONL(path)
    full = read_all(source)
    assert [r.id for r in full] == ["a", "b", None, "c", "d"]
    for k, record in enumerate(full):
        assert read_all(source, record.after) == full[k + 1 :], f"resuming after record {k}"


def test_jsonl_resuming_after_the_file_grew_reads_only_the_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl_lines({"id": "a"}, {"id": "b"}))
    source = JSONL(path)
    first = read_all(source)
    with path.open("a") as f:
        f.write(jsonl_lines({"id": "c"}, {"id": "d"}))

    rest = read_all(source, first[-1].after)

    assert [(r.line, r.id) for r in rest] == [(3, "c"), (4, "d")]
    assert [r.id for r in first + rest] == [r.id for r in read_all(source)]


def test_jsonl_position_past_the_end_of_a_shorter_file_reads_from_the_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl_lines(*({"id": f"old-{i}", "pad": "x" * 50} for i in range(5))))
    source = JSONL(path)
    old_end = read_all(source)[-1].after
    path.write_text(jsonl_lines({"id": "new-1"}, {"id": "new-2"}))

    records = read_all(source, old_end)

    assert [(r.line, r.id) for r in records] == [(1, "new-1"), (2, "new-2")]


def test_jsonl_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "in.jsonl"
    with pytest.raises(ConfigError, match="not found") as info:
        read_all(JSONL(path))
    assert str(path) in str(info.value)


# -- CSV ---------------------------------------------------------------------------------

CSV_TEXT = (
    "id,name,note\n"  # 1
    "1,alice,hi\n"  # 2
    '2,bob,"two\n'  # 3
    'lines"\n'  # 4: still the record of line 3
    "3,carol\n"  # 5: one field short
    "\n"  # 6: blank, skipped
    '4,dave,"say ""hi"""\n'  # 7
    "5,eve,x,extra\n"  # 8: one field too many
    "6,fay,last\n"  # 9
)


def test_csv_records_carry_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(CSV_TEXT.encode())
    records = read_all(CSV(path))

    assert [(r.line, r.id) for r in records] == [
        (2, "1"),
        (3, "2"),
        (5, None),
        (7, "4"),
        (8, None),
        (9, "6"),
    ]
    assert records[1].data == {"id": "2", "name": "bob", "note": "two\nlines"}
    assert records[3].data == {"id": "4", "name": "dave", "note": 'say "hi"'}
    assert records[2].error == "expected 3 fields, found 2"
    assert records[4].error == "expected 3 fields, found 4"
    assert records[-1].after == Position(path.stat().st_size, 9)


def test_csv_resuming_after_any_record_yields_exactly_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(CSV_TEXT.encode())
    source = CSV(path)
    full = read_all(source)
    for k, record in enumerate(full):
        assert read_all(source, record.after) == full[k + 1 :], f"resuming after record {k}"


def test_csv_resuming_after_the_file_grew_reads_only_the_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,v\r\na,1\r\n")
    source = CSV(path)
    first = read_all(source)
    with path.open("a", newline="") as f:
        f.write('b,"2\r\n2"\r\nc,3\r\n')

    rest = read_all(source, first[-1].after)

    assert [(r.line, r.id, r.data) for r in rest] == [
        (3, "b", {"id": "b", "v": "2\r\n2"}),
        (5, "c", {"id": "c", "v": "3"}),
    ]


def test_csv_header_with_a_byte_order_mark_still_names_the_id_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid,name\r\n1,ana\r\n".encode())
    [record] = read_all(CSV(path))
    assert (record.id, record.data, record.error) == ("1", {"id": "1", "name": "ana"}, None)


def test_csv_quoted_header_after_a_byte_order_mark_names_the_id_column(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes('\ufeff"id","name"\r\n"1","ana"\r\n'.encode())
    [record] = read_all(CSV(path))
    assert (record.id, record.data) == ("1", {"id": "1", "name": "ana"})


def test_csv_id_and_delimiter_options(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("key;value\nk1;v1\n;v2\n")
    records = read_all(CSV(path, id="key", delimiter=";"))
    assert [r.id for r in records] == ["k1", None]
    assert records[1].error is not None
    assert "'key'" in records[1].error


def test_csv_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.csv"
    with pytest.raises(ConfigError, match="not found") as info:
        read_all(CSV(path))
    assert str(path) in str(info.value)


# -- iterables ---------------------------------------------------------------------------

ROWS: list[Any] = [{"id": 1}, {"id": "two"}, "not a dict", {"name": "no id"}, {"id": 5}]


def test_iterable_source_numbers_records_and_reports_bad_ones() -> None:
    records = read_all(IterableSource(ROWS))
    assert [(r.line, r.id) for r in records] == [
        (1, "1"),
        (2, "two"),
        (3, None),
        (4, None),
        (5, "5"),
    ]
    assert records[2].error == "not a dict but str"
    assert records[3].error is not None
    assert "'id'" in records[3].error


def test_iterable_source_resumes_by_record_count() -> None:
    source = IterableSource(ROWS)
    full = read_all(source)
    for k, record in enumerate(full):
        assert read_all(source, record.after) == full[k + 1 :]


def test_iterable_source_from_a_function_is_read_afresh_each_time() -> None:
    calls = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal calls
        calls += 1
        yield from ({"id": i} for i in range(4))

    source = IterableSource(rows)
    full = read_all(source)
    rest = read_all(source, full[1].after)
    assert [r.id for r in full] == ["0", "1", "2", "3"]
    assert [(r.line, r.id) for r in rest] == [(3, "2"), (4, "3")]
    assert calls == 2


def test_iterable_source_id_function() -> None:
    source = IterableSource([{"a": 1, "b": 2}], id=lambda d: f"{d['a']}-{d['b']}")
    assert [r.id for r in read_all(source)] == ["1-2"]


# -- as_source ---------------------------------------------------------------------------


def test_as_source_picks_the_reader_from_the_file_suffix(tmp_path: Path) -> None:
    csv_source = as_source(str(tmp_path / "rows.csv"))
    jsonl_source = as_source(tmp_path / "rows.jsonl")
    assert isinstance(csv_source, CSV)
    assert csv_source.path == tmp_path / "rows.csv"
    assert isinstance(jsonl_source, JSONL)
    assert jsonl_source.path == tmp_path / "rows.jsonl"


def test_as_source_wraps_a_list_and_keeps_a_source_as_is(tmp_path: Path) -> None:
    wrapped = as_source([{"id": "x"}])
    assert isinstance(wrapped, IterableSource)
    assert [r.id for r in read_all(wrapped)] == ["x"]
    source = JSONL(tmp_path / "a.jsonl", id="k")
    assert as_source(source) is source


def test_as_source_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ConfigError, match="unsupported source: int"):
        as_source(42)
