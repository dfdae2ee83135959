"""pl.Upload: an inbox of files read as one stream, checked as each file streams in."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

import paceline as pl
from paceline.sources import Position, Record
from paceline.upload import UploadRejected, UploadTooLarge, safe_name


def bound(tmp_path: Path, fmt: str = "csv", **options: object) -> pl.Upload:
    upload = pl.Upload(format=fmt, id="account_id", **options)  # type: ignore[arg-type]
    job = pl.Job("accounts", source=upload)
    job.home = tmp_path
    upload.bind(job)
    return upload


def csv_file(path: Path, ids: range, *, extra: str = "") -> Path:
    rows = ["account_id,name", *(f"a{n},Company {n}" for n in ids)]
    path.write_text("\n".join(rows) + "\n" + extra)
    return path


def read_all(upload: pl.Upload, start: Position | None = None) -> list[Record]:
    return list(upload.read(start or Position()))


def test_an_upload_lands_in_the_jobs_inbox_and_is_read(tmp_path: Path) -> None:
    upload = bound(tmp_path)
    entry, new = upload.add(csv_file(tmp_path / "in.csv", range(3)))
    assert new
    assert entry.name == "in.csv"
    assert (entry.bytes, entry.lines) == ((tmp_path / "in.csv").stat().st_size, 4)
    inbox = tmp_path / ".paceline" / "uploads" / "accounts"
    assert (inbox / entry.file).read_bytes() == (tmp_path / "in.csv").read_bytes()
    records = read_all(upload)
    assert [(r.line, r.id) for r in records] == [(2, "a0"), (3, "a1"), (4, "a2")]
    assert records[-1].after == Position(entry.bytes, 4)


def test_files_are_one_stream_and_a_position_stays_true_when_a_file_arrives(
    tmp_path: Path,
) -> None:
    upload = bound(tmp_path)
    first, _ = upload.add(csv_file(tmp_path / "one.csv", range(3)))
    done = read_all(upload)[-1].after  # what a run committed after reading the first file
    upload.add(csv_file(tmp_path / "two.csv", range(2, 6), extra="x,y,z\n"))
    later = read_all(upload, done)
    assert [r.id for r in later] == ["a2", "a3", "a4", "a5", None]
    # Line numbers run on across files, so invalid lines never share an id...
    assert [r.line for r in later] == [6, 7, 8, 9, 10]
    # ...and an error in a later file names that file and its own line.
    assert later[-1].error == "expected 2 fields, found 3 (line 6 of upload 'two.csv')"
    # Resuming in the middle of the second file reads on from there.
    middle = later[1].after
    assert [r.id for r in read_all(upload, middle)] == ["a4", "a5", None]
    assert later[-1].after.offset == first.bytes + (tmp_path / "two.csv").stat().st_size


def test_the_same_bytes_given_twice_are_kept_once(tmp_path: Path) -> None:
    upload = bound(tmp_path)
    src = csv_file(tmp_path / "in.csv", range(3))
    first, new = upload.add(src)
    again, new_again = upload.add(src)
    assert new and not new_again
    assert again == first
    assert len(upload.files()) == 1
    inbox = upload.inbox
    kept = sorted(p.name for p in inbox.iterdir() if not p.name.startswith("."))
    assert kept == sorted([first.file, "index.json"])


def test_jsonl_uploads_and_bad_lines_become_failed_records(tmp_path: Path) -> None:
    upload = bound(tmp_path, "jsonl")
    src = tmp_path / "in.jsonl"
    src.write_text('{"account_id": "a1"}\nnot json\n\n{"name": "no id"}\n')
    upload.add(src)
    records = read_all(upload)
    assert [(r.line, r.id, r.error is None) for r in records] == [
        (1, "a1", True),
        (2, None, False),
        (4, None, False),
    ]
    assert records[1].error is not None and records[1].error.startswith("invalid JSON")


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("csv", "id,name\na,b\n", "the CSV header has no 'account_id' column (found 'id', 'name')"),
        ("csv", "account_id,name\n", "the file has no rows after the header"),
        ("csv", "", "the file is empty"),
        ("jsonl", "account_id,name\na1,x\n", "this is not JSON Lines"),
        ("jsonl", "[1, 2]\n", "the first line is not a JSON object but list"),
        ("jsonl", "\n\n", "the file has no rows"),
    ],
)
def test_files_the_job_cannot_read_are_refused_and_nothing_is_kept(
    tmp_path: Path, fmt: str, content: str, message: str
) -> None:
    upload = bound(tmp_path, fmt)
    src = tmp_path / f"in.{fmt}"
    src.write_bytes(content.encode())
    with pytest.raises(UploadRejected, match="^" + re.escape(f"in.{fmt}: {message}")):
        upload.add(src)
    assert upload.files() == []
    assert [p.name for p in upload.inbox.iterdir() if p.name != ".lock"] == []


def test_a_file_over_the_limit_stops_at_the_limit_and_leaves_nothing(tmp_path: Path) -> None:
    upload = bound(tmp_path)
    receiver = upload.receive("big.csv", max_bytes=1000)
    receiver.write(b"account_id,name\n" + b"a1,Company\n" * 80)  # 896 bytes: still taken
    with pytest.raises(UploadTooLarge, match="larger than the limit of 1,000 bytes"):
        receiver.write(b"a1,Company\n" * 10)
    assert list(upload.inbox.iterdir()) == []


def test_the_header_is_checked_as_soon_as_it_has_arrived(tmp_path: Path) -> None:
    upload = bound(tmp_path)
    receiver = upload.receive("x.csv")
    receiver.write(b"wrong,hea")
    with pytest.raises(UploadRejected, match="no 'account_id' column"):
        receiver.write(b"der\n" + b"1,2\n" * 10)
    assert list(upload.inbox.iterdir()) == []


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("accounts.csv", "accounts.csv"),
        ("../../etc/passwd", "passwd.csv"),
        ("..\\..\\windows\\evil.csv", "evil.csv"),
        ("/abs/path/list.CSV", "list.csv"),
        ("...", "upload.csv"),
        ("a b;rm -rf *.csv", "a_b_rm_-rf.csv"),
        ("nul\x00byte.csv", "nulbyte.csv"),
        ("x" * 300 + ".csv", "x" * 80 + ".csv"),
    ],
)
def test_client_file_names_are_only_labels(given: str, kept: str) -> None:
    assert safe_name(given, "csv") == kept


def test_a_dry_run_reads_a_file_as_if_added_without_keeping_it(tmp_path: Path) -> None:
    upload = bound(tmp_path)
    upload.add(csv_file(tmp_path / "one.csv", range(2)))
    with upload.including(csv_file(tmp_path / "two.csv", range(2, 4))):
        assert [r.id for r in read_all(upload)] == ["a0", "a1", "a2", "a3"]
    assert [r.id for r in read_all(upload)] == ["a0", "a1"]
    assert len(upload.files()) == 1


def test_an_index_that_lost_a_file_is_a_clear_error(tmp_path: Path) -> None:
    upload = bound(tmp_path)
    entry, _ = upload.add(csv_file(tmp_path / "one.csv", range(2)))
    index = upload.inbox / "index.json"
    index.write_text(json.dumps([]))
    with pytest.raises(pl.ConfigError, match="a file was removed"):
        read_all(upload, Position(entry.bytes, 3))


def test_an_unbound_upload_and_a_bad_format_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(pl.ConfigError, match="use 'csv' or 'jsonl'"):
        pl.Upload(format="xlsx")
    loose = pl.Upload(format="csv")
    assert list(itertools.islice(loose.read(Position()), 1)) == []
    with pytest.raises(pl.ConfigError, match="belongs to no job"):
        loose.add(tmp_path / "x.csv")
