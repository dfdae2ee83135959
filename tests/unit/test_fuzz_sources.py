"""Sources fed random bytes and malformed files: nothing escapes, every line is accounted for.

What is asserted, for JSONL and CSV alike:

* reading never raises, except a CSV's :class:`ConfigError` for its header (unreadable, or
  without the id column), raised before any record;
* a record without an error has a ``str`` id and data that ``json.dumps(default=str)``
  writes and UTF-8 encodes, as the store needs; a failed record has neither;
* records come in strictly increasing line order, each ending where the next begins or
  later, and resuming after any record yields exactly the records after it;
* JSONL: one record per physical line that is not blank (or is over the line limit);
* CSV (with a one-line header): a record covers the lines from ``line`` to
  ``after.line`` (a quoted field may span lines; a failed unterminated quote covers its
  first line only, and reading goes on with the next); the lines no record covers are blank
  rows (nothing, or ``""``, before the line break).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paceline.errors import ConfigError
from paceline.sources import CSV, JSONL, Position, Record

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LIMITS = st.sampled_from([24, 80, 8 * 2**20])


def read_all(source: Any, start: Position | None = None) -> list[Record]:
    return list(source.read(start or Position()))


def check_records(records: list[Record], size: int) -> None:
    lines = [r.line for r in records]
    assert lines == sorted(set(lines)), "line numbers strictly increase"
    for record, following in itertools.pairwise(records):
        assert record.after.offset <= following.after.offset
        assert record.after.line < following.line
    for r in records:
        assert r.line <= r.after.line
        assert 0 < r.after.offset <= size
        if r.error is None:
            assert isinstance(r.id, str)
            assert isinstance(r.data, dict)
            r.id.encode("utf-8")
            json.dumps(r.data, default=str).encode("utf-8")
        else:
            assert isinstance(r.error, str)
            assert (r.id, r.data) == (None, None)


def check_resume(source: Any, records: list[Record]) -> None:
    for k, record in enumerate(records):
        assert read_all(source, record.after) == records[k + 1 :], f"after record {k}"


# -- JSONL ---------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
JSON_LINE = st.builds(
    lambda obj, id_value: json.dumps(
        {**obj, "id": id_value} if id_value != "absent" else obj
    ).encode("utf-8", "surrogatepass"),
    st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=3),
    JSON_VALUES | st.just("absent"),
)
JSON_BITS = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b":", b",", b'"id"', b"1", b"NaN", b"1e400", b"\\u0000",
     b"\\ud800", b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b" ", b"\r", b"null", b"true",
     b"[" * 120, b"]" * 120, b"x" * 30]
)  # fmt: skip
JSONL_LINES = st.lists(
    st.one_of(
        JSON_LINE,
        st.lists(JSON_BITS, max_size=12).map(b"".join),
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
        st.sampled_from([b"", b"  ", b"\r", b"\t \r"]),
    ),
    max_size=12,
)


@FUZZ
@given(lines=JSONL_LINES, final_newline=st.booleans(), limit=LIMITS)
def test_jsonl_accounts_for_every_line_and_never_raises(
    tmp_path: Path, lines: list[bytes], final_newline: bool, limit: int
) -> None:
    content = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(content)
    source = JSONL(path, max_line_bytes=limit)

    records = read_all(source)

    check_records(records, len(content))
    physical = physical_lines(content)
    expected = [n for n, raw in enumerate(physical, 1) if raw.strip() or len(raw) > limit]
    assert [r.line for r in records] == expected
    check_resume(source, records)


def physical_lines(content: bytes) -> list[bytes]:
    """The lines as a source reads them: split at \\n only, each with its line break."""
    parts = content.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


# -- CSV -----------------------------------------------------------------------------------

CSV_BITS = st.sampled_from(
    [b'"', b'""', b",", b"\n", b"\r\n", b"\r", b"\x00", b"\xff", b"\xc3", b"\xc3\xa9",
     b"\xed\xa0\x80", b"a", b"1", b" ", b"id", b"x" * 30, b'"a,b"', b'"\n"']
)  # fmt: skip
CSV_BODY = st.lists(st.one_of(CSV_BITS, st.binary(max_size=6)), max_size=60).map(b"".join)


@FUZZ
@given(body=CSV_BODY, limit=LIMITS)
def test_csv_accounts_for_every_line_and_never_raises(
    tmp_path: Path, body: bytes, limit: int
) -> None:
    content = b"id,name,note\n" + body
    path = tmp_path / "fuzz.csv"
    path.write_bytes(content)
    source = CSV(path, max_line_bytes=limit)

    records = read_all(source)

    check_records(records, len(content))
    physical = physical_lines(content)
    covered = {n for r in records for n in range(r.line, r.after.line + 1)}
    assert min(covered, default=2) >= 2, "the header is no record"
    for n, raw in enumerate(physical[1:], 2):
        if n not in covered:
            assert raw.rstrip(b"\r\n") in (b"", b'""'), f"line {n} was lost"
    check_resume(source, records)


@FUZZ
@given(content=st.lists(st.one_of(CSV_BITS, st.binary(max_size=6)), max_size=40).map(b"".join))
def test_csv_any_header_reads_or_is_a_config_error_before_any_record(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(content)
    records = CSV(path, id=lambda d: d.get("id") or "x").read(Position())
    out: list[Record] = []
    try:
        out.append(next(records))
    except StopIteration:
        return
    except ConfigError:
        return
    out.extend(records)
    check_records(out, len(content))
