"""The commands users reach for every day around a long job, run as a user would."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from tests.conftest import run_cli

JOB = """
import paceline as pl

job = pl.Job(
    "daily",
    source=pl.JSONL("data/in.jsonl", id="id"),
    sink=pl.SQLiteSink("data/out.db", table="results"),
    retries=0,
)


@job.task
async def work(item, ctx):
    if item.data["n"] % 10 == 3:
        raise ValueError(f"bad n {item.data['n']}")
    if item.data["n"] % 10 == 7:
        raise pl.Permanent("HTTP-ish trouble")
    return {"double": item.data["n"] * 2, "tag": "t" + str(item.data["n"])}
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A job file in jobs/ whose relative paths mean its own folder."""
    folder = tmp_path / "jobs"
    (folder / "data").mkdir(parents=True)
    lines = [json.dumps({"id": f"i{n:03d}", "n": n}) for n in range(40)]
    lines.insert(5, "{not json")
    (folder / "data" / "in.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "job.py").write_text(JOB)
    return folder / "job.py"


def test_a_job_file_in_another_folder_runs_from_anywhere(job: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("run", job, "--progress", "none", cwd=elsewhere)
    assert result.returncode == 1, result.stderr  # some items fail on purpose
    assert (job.parent / "data" / "out.db").exists()
    assert list(elsewhere.iterdir()) == []  # nothing written where the command ran


def test_a_dotenv_beside_the_job_file_gives_its_keys_from_anywhere(
    job: Path, tmp_path: Path
) -> None:
    job.write_text(JOB.replace("retries=0,", 'retries=0, keys=pl.KeyPool.from_env("DAILYKEY"),'))
    (job.parent / ".env").write_text("DAILYKEY=sk-daily-0123456789abcdef\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plan = run_cli("plan", job, cwd=elsewhere)
    assert plan.returncode == 0 and "1 key(s)" in plan.stdout, plan.stderr
    assert "sk-daily-0123456789abcdef" not in plan.stdout


def test_a_start_that_fails_leaves_no_empty_output_file(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(JOB)  # its source file does not exist
    result = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path)
    assert result.returncode == 2 and "not found" in result.stderr
    assert not (tmp_path / "data" / "out.db").exists()


def test_failures_lists_every_failed_item_grouped_by_kind(job: Path) -> None:
    run_cli("run", job, "--progress", "none")
    text = run_cli("failures", job).stdout
    assert "9 failed item(s)" in text
    assert "4  ValueError" in text and "4  Permanent" in text and "1  invalid line" in text
    assert "i003 (line 4), attempts 1: ValueError: bad n 3" in text
    data = json.loads(run_cli("failures", job, "--json", "--limit", "2").stdout)
    assert data["failed"] == 9 and len(data["items"]) == 2
    assert {k["kind"]: k["count"] for k in data["kinds"]} == {
        "ValueError": 4, "Permanent": 4, "invalid line: invalid JSON": 1,
    }  # fmt: skip
    assert {"id", "attempts", "error", "kind", "line"} <= set(data["items"][0])


def test_export_streams_items_with_their_result_rows(job: Path, tmp_path: Path) -> None:
    run_cli("run", job, "--progress", "none")
    lines = run_cli("export", job).stdout.splitlines()
    rows = {r["id"]: r for r in map(json.loads, lines)}
    assert len(rows) == 41
    assert rows["i004"] == {
        "id": "i004", "status": "done", "attempts": 1, "error": None, "line": 5,
        "result": {"double": 8, "tag": "t4"},
    }  # fmt: skip
    assert rows["i003"]["status"] == "failed" and rows["i003"]["result"] is None

    out = tmp_path / "failed.csv"
    result = run_cli("export", job, "--format", "csv", "--status", "failed", "-o", out)
    assert result.returncode == 0 and "9 item(s) written" in result.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(table) == 9 and {r["status"] for r in table} == {"failed"}
    assert set(table[0]) == {"id", "status", "attempts", "error", "line", "double", "tag"}
    again = run_cli("export", job, "-o", out)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwritten


def test_csv_export_keeps_line_breaks_in_one_cell_and_names_clashing_fields_apart(
    job: Path,
) -> None:
    job.write_text(
        JOB.replace(
            'return {"double": item.data["n"] * 2, "tag": "t" + str(item.data["n"])}',
            'return {"status": "ok", "note": "two\\nlines, quoted"}',
        )
    )
    run_cli("run", job, "--progress", "none")
    result = run_cli("export", job, "--format", "csv", "--status", "done")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(table) == 32
    assert {(r["status"], r["result.status"], r["note"]) for r in table} == {
        ("done", "ok", "two\nlines, quoted")
    }


def test_verify_says_what_was_never_processed_and_repair_redoes_missing_rows(
    job: Path,
) -> None:
    first = run_cli("run", job, "--progress", "none", "--max-items", "10")
    assert first.returncode in (0, 1), first.stderr
    partial = run_cli("verify", job)
    assert partial.returncode == 1 and "not processed yet" in partial.stdout

    run_cli("run", job, "--progress", "none")
    db = sqlite3.connect(job.parent / "data" / "out.db")
    db.execute("DELETE FROM results WHERE id IN ('i000', 'i001')")
    db.commit()
    db.close()
    broken = run_cli("verify", job)
    assert broken.returncode == 1 and "missing: 2 done but not in the sink" in broken.stdout
    repaired = run_cli("verify", job, "--repair")
    assert "repaired: 2 item(s) put back" in repaired.stdout
    run_cli("run", job, "--progress", "none")
    assert run_cli("verify", job).returncode == 0


def test_expedite_of_a_done_item_says_how_to_redo_it(job: Path) -> None:
    run_cli("run", job, "--progress", "none")
    told = run_cli("expedite", job, "i004").stdout
    assert "already done" in told and "--again" in told
    again = run_cli("expedite", job, "i004", "--again")
    assert "expedited (was done)" in again.stdout
    status = json.loads(run_cli("status", job, "--json").stdout)
    assert status["pending"] == 1


def test_plan_works_without_keys_and_never_invents_a_daily_limit(job: Path) -> None:
    no_keys = run_cli("plan", job)
    assert no_keys.returncode == 0 and "no keys" in no_keys.stdout
    keyed = job.parent / "keyed.py"
    keyed.write_text(
        JOB.replace(
            "retries=0,", 'retries=0, keys=pl.KeyPool(["sk-1234567890abcdef"], rpm=60),'
        ).replace('"daily"', '"keyed"')
    )
    text = run_cli("plan", keyed).stdout
    assert "no daily limit" in text and "60 requests/minute" in text
    assert "requests/day" not in text


def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / ".paceline").mkdir()
    (tmp_path / ".paceline" / "other.db").write_text("another job's store")
    (tmp_path / "results.db").write_text("someone's results")
    result = run_cli("demo", "--items", "20", "--dir", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "did not make" in result.stderr
    assert (tmp_path / ".paceline" / "other.db").read_text() == "another job's store"
    assert (tmp_path / "results.db").read_text() == "someone's results"


def test_the_demo_continues_when_run_again_and_writes_a_job_file(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    first = run_cli("demo", "--items", "40", "--dir", folder, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (folder / "job.py").exists()
    status = json.loads(run_cli("status", folder / "job.py", "--json").stdout)
    assert (status["done"], status["total"]) == (40, 40)
    second = run_cli("demo", "--items", "40", "--dir", folder, cwd=tmp_path)
    assert second.returncode == 0 and "continuing the earlier demo" in second.stderr
    assert "0 done" in second.stdout  # nothing done twice
    fresh = run_cli("demo", "--items", "10", "--dir", folder, "--fresh", cwd=tmp_path)
    assert fresh.returncode == 0
    status = json.loads(run_cli("status", folder / "job.py", "--json").stdout)
    assert (status["done"], status["total"]) == (10, 10)
    keys = run_cli("keys", folder / "job.py")
    assert keys.returncode == 0 and "…" in keys.stdout


def test_expedite_of_an_invalid_line_says_how_to_read_it_again(job: Path) -> None:
    run_cli("run", job, "--progress", "none")
    before = json.loads(run_cli("status", job, "--json").stdout)
    told = run_cli("expedite", job, "@line:6")
    assert told.returncode == 1
    assert "invalid source line" in told.stdout and "retry" in told.stdout
    assert "--invalid" in told.stdout
    after = json.loads(run_cli("status", job, "--json").stdout)
    assert (after["failed"], after["pending"]) == (before["failed"], 0)
