"""Sources: records with their line numbers and errors, and exact resumption from a position."""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from paceline.errors import ConfigError
from paceline.sources import CSV, JSONL, SQL, IterableSource, Position, Record, as_source


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


# -- every bad line is one failed item, whatever is in it ---------------------------------

SECRET = "sk-live-Zq8Xw2Lm9Pt4Rv7Ks1"


def assert_storable(records: list[Record]) -> None:
    """What the store does with a record: its id and its data as JSON go into SQLite."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE items (id TEXT PRIMARY KEY, data TEXT)")
    for r in records:
        if r.error is None:
            assert isinstance(r.id, str)
            db.execute(
                "INSERT OR IGNORE INTO items VALUES (?, ?)", (r.id, json.dumps(r.data, default=str))
            )
        else:
            assert (r.id, r.data) == (None, None)
            assert SECRET not in r.error, "an error quotes the line"


def assert_resumes_exactly(source: Any) -> list[Record]:
    full = read_all(source)
    for k, record in enumerate(full):
        assert read_all(source, record.after) == full[k + 1 :], f"resuming after record {k}"
    return full


def errors_by_line(records: list[Record]) -> dict[int, str | None]:
    return {r.line: r.error for r in records}


def test_jsonl_bad_bytes_nul_and_depth_each_fail_one_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"id": "a"}\n'  # 1
        + b'{"id": "b", "secret": "'
        + SECRET.encode()
        + b'\xff"}\n'  # 2: invalid UTF-8
        + b'{"id": "c", "v": "x\x00y"}\n'  # 3: a raw NUL byte: not JSON
        + b'{"id": "d", "v": "x\\u0000y"}\n'  # 4: an escaped NUL: no store takes it
        + ('{"id": "e", "v": ' + "[" * 2000 + "]" * 2000 + "}\n").encode()  # 5: RecursionError
        + ('{"id": "f", "v": ' + "[" * 100 + "]" * 100 + "}\n").encode()  # 6: 101 deep
        + ('{"id": "g", "v": ' + "[" * 99 + "]" * 99 + "}\n").encode()  # 7: 100 deep: fine
        + b'{"id": "h", "v": "\\ud83d"}\n'  # 8: a lone surrogate
        + b'{"id": "i", "v": "\\ud83d\\ude00"}\n'  # 9: a surrogate pair is an emoji: fine
        + b'{"id": "j"}\n'  # 10
    )
    records = assert_resumes_exactly(JSONL(path))
    assert_storable(records)
    assert [r.id for r in records if r.error is None] == ["a", "g", "i", "j"]
    assert errors_by_line(records) == {
        1: None,
        2: "invalid UTF-8 at byte 50 of the line",
        3: "invalid JSON: Invalid control character at: line 1 column 20 (char 19)",
        4: "a NUL character in field 'v'",
        5: "nested deeper than 100 levels",
        6: "nested deeper than 100 levels in field 'v'",
        7: None,
        8: "text that is not valid Unicode (a lone surrogate) in field 'v'",
        9: None,
        10: None,
    }
    assert records[-1].after == Position(path.stat().st_size, 10)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"plain"', "plain"),
        ("7", "7"),
        ("-7", "-7"),
        ("2.5", "2.5"),
        ('"ünï 💡"', "ünï 💡"),
        ('"' + "x" * 1000 + '"', "x" * 1000),
    ],
)
def test_jsonl_ids_that_make_items(tmp_path: Path, value: str, expected: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": ' + value + "}\n", encoding="utf-8")
    [record] = read_all(JSONL(path))
    assert (record.id, record.error) == (expected, None)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ('{"a": 1}', "the id is an object, not a string or a number"),
        ("[1, 2]", "the id is a list, not a string or a number"),
        ("true", "the id is true or false, not a string or a number"),
        ("NaN", "the id is not a finite number"),
        ("Infinity", "the id is not a finite number"),
        ("1e400", "the id is not a finite number"),
        ('"' + "x" * 1001 + '"', "the id is longer than 1000 characters"),
        ("9" * 1001, "the id is longer than 1000 characters"),
        ('"a\\u0000b"', "the id contains a NUL character"),
        ('"a\\udc80"', "the id contains text that is not valid Unicode (a lone surrogate)"),
        ("null", "no id: field 'id' is missing or empty"),
        ('""', "no id: field 'id' is missing or empty"),
    ],
)
def test_jsonl_ids_that_cannot_be_item_ids_fail_their_line(
    tmp_path: Path, value: str, error: str
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "before"}\n{"id": ' + value + '}\n{"id": "after"}\n')
    records = read_all(JSONL(path))
    assert [(r.line, r.id, r.error) for r in records] == [
        (1, "before", None),
        (2, None, error),
        (3, "after", None),
    ]


def test_jsonl_id_function_that_raises_fails_the_line_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl_lines({"repo": "a/b"}, {"name": SECRET}))
    records = read_all(JSONL(path, id=lambda d: d["repo"]))
    assert [(r.id, r.error) for r in records] == [
        ("a/b", None),
        (None, "the id function raised KeyError"),
    ]


def test_jsonl_ten_megabyte_line_fails_unread_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    big = json.dumps({"id": "big", "text": "x" * 10_000_000}) + "\n"
    path.write_text(jsonl_lines({"id": "a"}) + big + jsonl_lines({"id": "b"}))
    records = read_all(JSONL(path))
    assert [(r.line, r.id) for r in records] == [(1, "a"), (2, None), (3, "b")]
    assert records[1].error == (
        f"line of {len(big):,} bytes is over the limit of 8,388,608 (max_line_bytes)"
    )
    assert read_all(JSONL(path), records[1].after) == records[2:]


def test_jsonl_line_limit_is_an_option_and_counts_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a"}\n{"id": "bb"}\n{"id": "c"}')  # 12, 13 and 11 bytes
    records = assert_resumes_exactly(JSONL(path, max_line_bytes=12))
    assert [(r.line, r.id) for r in records] == [(1, "a"), (2, None), (3, "c")]
    assert records[1].error == "line of 13 bytes is over the limit of 12 (max_line_bytes)"
    with pytest.raises(ConfigError, match="max_line_bytes"):
        read_all(JSONL(path, max_line_bytes=0))


def test_jsonl_first_line_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n{"id": "b"}\n')
    assert [(r.id, r.error) for r in read_all(JSONL(path))] == [("a", None), ("b", None)]


def test_jsonl_errors_never_quote_the_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        f'{{"id": "{SECRET}", oops}}\n'
        f'["{SECRET}"]\n'
        f'{{"id": ["{SECRET}"]}}\n'
        f'{{"id": "{SECRET}" * 50}}\n'
        f'{{"{SECRET}\\u0000": 1, "id": "x"}}\n'
    )
    records = read_all(JSONL(path))
    assert len(records) == 5
    assert all(r.error is not None and SECRET not in r.error for r in records)


CSV_BAD = (
    b"id,name,note\n"  # 1
    b"1,alice,hi\n"  # 2
    b"2,b\xffb,x\n"  # 3: invalid UTF-8
    b'3,carol,"a\x00b"\n'  # 4: NUL
    b'4,dave,"two\n'  # 5: a legit field over two lines
    b'lines"\n'  # 6
    b"5,eve,a\rb\n"  # 7: a lone CR in an unquoted field
    b'6,fay,"never closed\n'  # 8: the quote never closes
    b"7,gus,after\n"  # 9
    b'8,hal,"x""y"\n'  # 10
    b"9,ivy,last"  # 11: no final newline
)


def test_csv_bad_rows_each_fail_one_line_and_the_rest_come_through(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(CSV_BAD)
    records = assert_resumes_exactly(CSV(path))
    assert_storable(records)
    assert [(r.line, r.id) for r in records if r.error is None] == [
        (2, "1"),
        (5, "4"),
        (9, "7"),
        (10, "8"),
        (11, "9"),
    ]
    data = {r.line: r.data for r in records}
    assert data[5] == {"id": "4", "name": "dave", "note": "two\nlines"}
    assert data[10] == {"id": "8", "name": "hal", "note": 'x"y'}
    errors = {r.line: r.error for r in records if r.error is not None}
    assert errors == {
        3: "invalid UTF-8 at byte 4 of the row",
        4: "a NUL character in field 'note'",
        7: "malformed CSV: a line break (CR) inside an unquoted field",
        8: (
            "unterminated quote: a quoted field opened on this line runs to line 10 and does "
            "not end as a field should, so this line is failed alone and reading goes on with "
            "the next (check the rows after it)"
        ),
    }
    assert records[-1].after == Position(len(CSV_BAD), 11)


def test_csv_unterminated_quote_is_not_merged_into_the_rows_after_it(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    rows = "".join(f"{i},row {i}\n" for i in range(3, 50))
    path.write_text('id,name\n1,one\n2,"two\n' + rows)
    records = assert_resumes_exactly(CSV(path))
    assert [(r.line, r.id, r.error is None) for r in records[:3]] == [
        (2, "1", True),
        (3, None, False),
        (4, "3", True),
    ]
    assert [r.id for r in records[2:]] == [str(i) for i in range(3, 50)]
    assert records[1].error is not None
    assert records[1].error.startswith(
        "unterminated quote: a quoted field opened on this line never closes"
    )


def test_csv_a_legit_quoted_field_over_many_lines_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    note = "\n".join(f'line {i}, with a "" quote' for i in range(200))
    path.write_text(f'id,note\n1,"{note}"\n2,after\n')
    records = assert_resumes_exactly(CSV(path))
    assert [(r.line, r.id) for r in records] == [(2, "1"), (202, "2")]
    assert records[0].data == {"id": "1", "note": note.replace('""', '"')}


def test_csv_a_field_longer_than_the_csv_modules_default_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"id,text\n1,{'x' * 300_000}\n")
    [record] = read_all(CSV(path))
    assert (record.id, len(record.data["text"]) if record.data else 0) == ("1", 300_000)


def test_csv_row_over_the_limit_fails_unkept_and_reading_goes_on_after_it(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    long_quoted = '2,"' + "x" * 50 + "\n" + "y" * 50 + "\n" + "z" * 50 + '"\n'
    long_line = "3," + "w" * 200 + "\n"
    long_quoted_line = '4,"' + "a, b\n" * 3 + "c" * 200 + '"\n'  # an over-long line in quotes
    path.write_text("id,v\n1,a\n" + long_quoted + long_line + long_quoted_line + "5,e\n")
    records = assert_resumes_exactly(CSV(path, max_line_bytes=64))
    assert [(r.line, r.id) for r in records] == [
        (2, "1"),
        (3, None),
        (6, None),
        (7, None),
        (11, "5"),
    ]
    assert records[1].error == (
        f"row of {len(long_quoted):,} bytes is over the limit of 64 (max_line_bytes)"
    )
    assert (
        records[2].error
        == f"row of {len(long_line)} bytes is over the limit of 64 (max_line_bytes)"
    )


def test_csv_other_encodings_still_read(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes("id,name\n1,Zoë\n".encode("latin-1"))
    assert read_all(CSV(path))[0].error == "invalid UTF-8 at byte 5 of the row"
    [record] = read_all(CSV(path, encoding="latin-1"))
    assert record.data == {"id": "1", "name": "Zoë"}
    [record] = read_all(CSV(path, encoding="utf-8-sig", id="name"))
    assert record.error is not None


def test_csv_header_without_the_id_column_is_a_config_error_before_any_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.csv"
    path.write_text("key,name,email\n1,ana,a@example.com\n")
    rows = CSV(path).read(Position())
    with pytest.raises(ConfigError) as info:
        next(rows)
    message = str(info.value)
    assert "'id'" in message
    assert "'key', 'name', 'email'" in message
    assert str(path) in message
    assert [r.id for r in read_all(CSV(path, id="key"))] == ["1"]
    assert [r.id for r in read_all(CSV(path, id=lambda d: d["key"]))] == ["1"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"id,n\xffame\n1,a\n", "invalid UTF-8 at byte 5"),
        (b'id,"name\n1,a\n', "unterminated quote"),
        (b"id,na\x00me\n1,a\n", "NUL"),
        (b"\n1,a\n", "names no columns"),
    ],
)
def test_csv_unreadable_header_is_a_config_error(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        read_all(CSV(path))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"encoding": "utf-16"}, "convert .* to UTF-8"),
        ({"encoding": "no-such-codec"}, "unknown encoding"),
        ({"delimiter": ";;"}, "one character"),
        ({"delimiter": '"'}, "cannot be"),
    ],
)
def test_csv_options_that_cannot_work_are_config_errors(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id\n1\n")
    with pytest.raises(ConfigError, match=match):
        read_all(CSV(path, **options))


def test_csv_empty_file_and_header_only_have_no_records(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("")
    assert read_all(CSV(path)) == []
    path.write_text("id,name\n")
    assert read_all(CSV(path)) == []


def test_iterable_records_that_cannot_be_stored_fail_alone() -> None:
    deep: Any = []
    for _ in range(150):
        deep = [deep]
    cycle: dict[str, Any] = {"id": "cycle"}
    cycle["self"] = cycle
    rows: list[Any] = [
        {"id": "ok", "when": datetime.date(2024, 1, 1), "n": Decimal("1.5")},
        {"id": ["a", "b"]},
        {"id": "x", "deep": deep},
        cycle,
        {"id": "x", ("a", "b"): 1},
        {"id": "x", "v": "\udc80"},
        {"id": "x", "v": 10**5000},
        {"id": "x", "v": {"nested": "a\x00"}},
        {"id": b"bytes"},
        {"id": UUID(int=7)},
        {"id": Decimal("12.50")},
        {"id": float("nan")},
    ]
    records = assert_resumes_exactly(IterableSource(rows))
    assert_storable(records)
    assert [(r.id, r.error) for r in records] == [
        ("ok", None),
        (None, "the id is a list, not a string or a number"),
        (None, "nested deeper than 100 levels in field 'deep'"),
        (None, "nested deeper than 100 levels in field 'self'"),
        (None, "a field name that is a list"),
        (None, "text that is not valid Unicode (a lone surrogate) in field 'v'"),
        (None, "a number too long to write in field 'v'"),
        (None, "a NUL character in field 'v'"),
        (None, "the id is bytes, not a string or a number"),
        ("00000000-0000-0000-0000-000000000007", None),
        ("12.50", None),
        (None, "the id is not a finite number"),
    ]


def test_iterable_mapping_that_cannot_be_read_fails_alone() -> None:
    class Broken(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError(SECRET)

        def __len__(self) -> int:
            return 1

    records = read_all(IterableSource([Broken(), {"id": 2}]))
    assert [(r.id, r.error) for r in records] == [
        (None, "the record cannot be read (RuntimeError)"),
        ("2", None),
    ]


# -- SQL -----------------------------------------------------------------------------------


def sqlite_source(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "src.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, id, v)")
    for row in rows:
        db.execute(f"INSERT INTO t (id, v) VALUES ({row})")
    db.commit()
    db.close()
    return path


def test_sql_rows_that_cannot_be_items_fail_alone_and_the_rest_go_on(tmp_path: Path) -> None:
    path = sqlite_source(
        tmp_path,
        "'a', 'fine'",
        "'b', CAST(x'41ff42' AS TEXT)",  # text that is not UTF-8
        "x'0102', 'blob id'",
        "NULL, 'no id'",
        "'c', x'00ff'",  # a blob value is written as text
        "3.0, 'real id'",
        "'d', 'a' || char(0) || 'b'",
    )
    source = SQL(path, "SELECT id, v FROM t ORDER BY n")
    records = assert_resumes_exactly(source)
    assert_storable(records)
    assert [(r.line, r.id, r.error) for r in records] == [
        (1, "a", None),
        (2, None, "text that is not valid Unicode (a lone surrogate) in field 'v'"),
        (3, None, "the id is bytes, not a string or a number"),
        (4, None, "no id: field 'id' is missing or empty"),
        (5, "c", None),
        (6, "3.0", None),
        (7, None, "a NUL character in field 'v'"),
    ]


def test_sql_query_without_the_id_column_is_a_config_error(tmp_path: Path) -> None:
    path = sqlite_source(tmp_path, "'a', 'x'")
    with pytest.raises(ConfigError, match=r"no 'id' column .* 'n', 'v'"):
        read_all(SQL(path, "SELECT n, v FROM t"))
    assert [r.id for r in read_all(SQL(path, "SELECT n, v FROM t", id="n"))] == ["1"]


def test_csv_stray_quote_closed_by_a_later_rows_quotes_is_not_merged(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,name,note\n1,"ann,hi\n2,bob,"say ""hi"""\n3,cat,plain\n')
    records = assert_resumes_exactly(CSV(path))
    assert [(r.line, r.id) for r in records] == [(2, None), (3, "2"), (4, "3")]
    assert records[0].error is not None
    assert "runs to line 3" in records[0].error
    assert records[1].data == {"id": "2", "name": "bob", "note": 'say "hi"'}


def test_csv_clean_row_over_several_lines_with_a_wrong_field_count_fails_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,note\n1,"a\nb",extra\n2,fine\n')
    records = assert_resumes_exactly(CSV(path))
    assert [(r.line, r.id, r.error) for r in records] == [
        (2, None, "expected 2 fields, found 3"),
        (4, "2", None),
    ]
