"""Selective, prioritised, lazy work: `needs`, `priority`, `expedite`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.conftest import SimFactory, paceline_cmd, read_jsonl, run_cli
from tests.e2e.jobs import write_sim_job

SELECTIVE = """
from pathlib import Path
import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    "pages",
    source=[{"id": f"p{n}", "n": n, "views": (n * 37) % 101} for n in range(30)],
    sink=pl.JSONLSink(HERE / "out.jsonl"),
    needs=lambda item: item.data["n"] % 3 != 0,
    priority=lambda item: item.data["views"],
)

@job.task
async def fix(item, ctx):
    return {"views": item.data["views"]}
"""


def test_only_items_that_need_work_run_most_used_first(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(SELECTIVE)
    result = run_cli("run", job, "--sequential")
    assert result.returncode == 0, result.stderr
    assert "skipped (need no work): 10" in result.stdout
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 20 and all(int(r["id"][1:]) % 3 != 0 for r in rows)
    views = [r["views"] for r in rows]
    assert views == sorted(views, reverse=True)
    status = json.loads(run_cli("status", job, "--json").stdout)
    assert (status["done"], status["skipped"], status["total"]) == (20, 10, 30)


def test_an_expedited_item_runs_within_seconds_while_the_bulk_goes_on(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="fixed:0.5")
    job = write_sim_job(tmp_path, 300, concurrency=2)
    proc = subprocess.Popen(
        [*paceline_cmd("run", job), "--concurrency", "2"], cwd=tmp_path,
        env={**os.environ, "SIM_URL": sim.url}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "out.jsonl").exists() or not read_jsonl(tmp_path / "out.jsonl"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        asked = time.monotonic()
        out = run_cli("expedite", job, "it-00299", "nope")
        assert out.returncode == 1  # one id is unknown
        assert "it-00299: expedited (was pending)" in out.stdout
        assert "nope: not found" in out.stdout
        while "it-00299" not in {r["id"] for r in read_jsonl(tmp_path / "out.jsonl")}:
            assert time.monotonic() - asked < 5, "the expedited item should run within seconds"
            time.sleep(0.1)
        assert proc.poll() is None, "the bulk run goes on"
        assert len(read_jsonl(tmp_path / "out.jsonl")) < 100
    finally:
        proc.kill()
        proc.wait()


def test_a_daily_item_budget_holds_across_runs(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(SELECTIVE)
    first = run_cli("run", job, "--per-day", "8")
    assert first.returncode == 0, first.stderr
    assert "today's item budget (--per-day) is spent" in first.stdout
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 8
    again = run_cli("run", job, "--per-day", "8")  # the same day: nothing more
    assert again.returncode == 0 and len(read_jsonl(tmp_path / "out.jsonl")) == 8
    more = run_cli("run", job, "--per-day", "15")  # a larger budget: 7 more today
    assert more.returncode == 0 and len(read_jsonl(tmp_path / "out.jsonl")) == 15
