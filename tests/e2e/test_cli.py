"""The CLI as a user meets it: errors, dry run, limits, retry, progress and status."""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import SimFactory, paceline_cmd, read_jsonl, run_cli, write_jsonl
from tests.e2e.jobs import write_sim_job

LOCAL_JOB = """
from pathlib import Path
import paceline as pl

HERE = Path(__file__).parent
job = pl.Job("local", source={source}, sink=pl.JSONLSink(HERE / "out.jsonl"), retries=2,
             backoff=pl.Backoff(base=0.01, cap=0.05))

@job.task
async def work(item, ctx):
    if (HERE / "broken").exists() and int(item.data["n"]) % 3 == 0:
        raise ValueError("item " + item.id + " is broken")
    return {{"n": int(item.data["n"]), "twice": 2 * int(item.data["n"])}}
"""


def local_job(folder: Path, items: int = 30, source: str = "jsonl") -> Path:
    if source == "jsonl":
        write_jsonl(folder / "items.jsonl", [{"id": f"k{n}", "n": n} for n in range(items)])
        code = 'pl.JSONL(HERE / "items.jsonl", id="id")'
    else:
        lines = ["id,n", *(f"k{n},{n}" for n in range(items))]
        (folder / "items.csv").write_text("\n".join(lines) + "\n")
        code = 'pl.CSV(HERE / "items.csv", id="id")'
    job = folder / "job.py"
    job.write_text(LOCAL_JOB.format(source=code))
    return job


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("paceline: error: ")
    for needle in needles:
        assert needle in lines[0]


# -- clear errors -----------------------------------------------------------------------


def test_missing_job_file(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("run", tmp_path / "nope.py"), "job file not found", "nope.py")


def test_job_file_without_job(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("x = 1\n")
    assert_one_line_error(run_cli("run", tmp_path / "job.py"), "does not define `job`")


def test_job_file_with_a_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("import paceline\n\ndef broken(:\n")
    assert_one_line_error(run_cli("run", tmp_path / "job.py"), "job.py:3", "syntax error")


def test_job_file_that_raises_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("import paceline\nx = 1\nraise RuntimeError('boom')\n")
    assert_one_line_error(run_cli("status", tmp_path / "job.py"), "job.py:3", "boom")


def test_job_with_a_bad_option_value(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(
        "import paceline as pl\njob = pl.Job('x', source=[], retries=-1)\n"
    )
    assert_one_line_error(run_cli("run", tmp_path / "job.py"), "retries")


def test_unknown_option_and_bad_value(tmp_path: Path) -> None:
    job = local_job(tmp_path)
    assert_one_line_error(run_cli("run", job, "--bogus"), "--bogus")
    assert_one_line_error(run_cli("run", job, "--concurrency", "0"), "--concurrency")
    assert_one_line_error(run_cli("frobnicate"), "frobnicate")


def test_missing_source_file(tmp_path: Path) -> None:
    job = local_job(tmp_path)
    (tmp_path / "items.jsonl").unlink()
    assert_one_line_error(run_cli("run", job), "source file not found", "items.jsonl")


@pytest.mark.parametrize("source", ["jsonl", "csv"])
def test_malformed_rows_fail_with_their_line_and_the_rest_go_on(
    tmp_path: Path, source: str
) -> None:
    job = local_job(tmp_path, 10, source)
    src = tmp_path / f"items.{source}"
    lines = src.read_text().splitlines()
    lines.insert(4, '{"id": "k-broken", ' if source == "jsonl" else "k-broken,1,extra")
    src.write_text("\n".join(lines) + "\n")

    result = run_cli("run", job, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    status = json.loads(run_cli("status", job, "--json").stdout)
    assert (status["done"], status["failed"]) == (10, 1)
    (failure,) = status["recent_failures"]
    assert failure["error"].startswith("line 5: ")
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 10


def test_duplicate_ids_are_reported_and_processed_once(tmp_path: Path) -> None:
    job = local_job(tmp_path, 5)
    with (tmp_path / "items.jsonl").open("a") as f:
        f.write('{"id": "k2", "n": 99}\n')
    result = run_cli("run", job)
    assert result.returncode == 0, result.stderr
    assert "duplicate ids in the source (skipped): 1" in result.stdout
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == ["k0", "k1", "k2", "k3", "k4"]
    assert next(r for r in rows if r["id"] == "k2")["n"] == 2


# -- dry run, limits, retry -------------------------------------------------------------


def test_dry_run_reports_and_touches_nothing(tmp_path: Path) -> None:
    job = local_job(tmp_path, 20)
    with (tmp_path / "items.jsonl").open("a") as f:
        f.write("not json\n")
    first = run_cli("run", job, "--max-items", "5")
    assert first.returncode == 1, first.stderr  # the invalid line failed for good
    out_before = (tmp_path / "out.jsonl").read_bytes()

    dry = run_cli("run", job, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "21 records" in dry.stdout
    assert "would run:      15 (0 new, 15 left from earlier runs)" in dry.stdout
    assert "already done:   5" in dry.stdout
    assert "invalid:        1" in dry.stdout
    assert "line 21: invalid JSON" in dry.stdout
    assert (tmp_path / "out.jsonl").read_bytes() == out_before

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    job2 = local_job(fresh, 7)
    assert "would run:      7 (7 new, 0 left" in run_cli("run", job2, "--dry-run").stdout
    assert not (fresh / ".paceline").exists() and not (fresh / "out.jsonl").exists()


def test_max_items_stops_after_n_items_and_a_rerun_continues(tmp_path: Path) -> None:
    job = local_job(tmp_path, 25)
    result = run_cli("run", job, "--max-items", "10")
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 10
    assert "stopped after --max-items (10 items)" in result.stdout
    assert run_cli("run", job).returncode == 0
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 25


def test_sequential_mode_processes_items_one_by_one_in_order(tmp_path: Path) -> None:
    job = local_job(tmp_path, 40)
    assert run_cli("run", job, "--sequential").returncode == 0
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [f"k{n}" for n in range(40)]


def test_failed_items_keep_their_error_and_retry_puts_them_back(tmp_path: Path) -> None:
    job = local_job(tmp_path, 12)
    (tmp_path / "broken").touch()
    first = run_cli("run", job)
    assert first.returncode == 1
    status = json.loads(run_cli("status", job, "--json").stdout)
    assert (status["done"], status["failed"]) == (8, 4)
    failure = status["recent_failures"][0]
    assert failure["attempts"] == 1  # a task's own exception is permanent: no retries spent
    assert "ValueError: item k" in failure["error"]

    (tmp_path / "broken").unlink()
    again = run_cli("retry", job)
    assert again.returncode == 0 and "4 failed item(s) put back" in again.stdout
    assert run_cli("run", job).returncode == 0
    assert sorted(int(r["n"]) for r in read_jsonl(tmp_path / "out.jsonl")) == list(range(12))


def test_second_run_on_the_same_store_is_refused(tmp_path: Path, sim_server: SimFactory) -> None:
    sim = sim_server(latency="fixed:1")
    job = write_sim_job(tmp_path, 20, concurrency=2)
    env = {**os.environ, "SIM_URL": sim.url}
    first = subprocess.Popen(
        paceline_cmd("run", job),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while json.loads(run_cli("status", job, "--json").stdout)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = run_cli("run", job, env={"SIM_URL": sim.url})
        assert_one_line_error(second, "already running", f"pid {first.pid}")
    finally:
        first.kill()
        first.wait()


# -- progress and status ----------------------------------------------------------------


def test_without_a_terminal_progress_is_plain_log_lines_and_a_summary(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="fixed:0.05")
    job = write_sim_job(tmp_path, 120, concurrency=4)
    result = run_cli("run", job, "--log-interval", "0.5", env={"SIM_URL": sim.url})
    assert result.returncode == 0, result.stderr
    logs = [line for line in result.stderr.splitlines() if line.startswith("[paceline] work:")]
    assert len(logs) >= 2, result.stderr
    assert "/120 (" in logs[-1] and "rate=" in logs[-1] and "eta=" in logs[-1]
    assert "\x1b[" not in result.stderr  # no terminal escapes in a log
    assert "job 'work' finished" in result.stdout
    assert "120 done, 0 failed" in result.stdout


def test_in_a_terminal_a_live_dashboard_shows_progress(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="fixed:0.05")
    job = write_sim_job(tmp_path, 80, concurrency=4)
    main, child = pty.openpty()
    proc = subprocess.Popen(
        paceline_cmd("run", job),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        env={**os.environ, "SIM_URL": sim.url, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(child)
    screen = b""
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    proc.wait(timeout=30)
    os.close(main)
    text = screen.decode(errors="replace")
    assert proc.returncode == 0, text
    for needle in ("paceline", "ETA", "throughput now", "in flight", "━", "100.0%", "…0001"):
        assert needle in text, needle
    assert "[paceline] work:" not in text  # the dashboard, not log lines


def test_status_while_a_run_is_going_from_another_process(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="fixed:0.4")
    job = write_sim_job(tmp_path, 100, concurrency=5)
    assert json.loads(run_cli("status", job, "--json").stdout)["state"] == "not started"
    proc = subprocess.Popen(
        paceline_cmd("run", job),
        cwd=tmp_path,
        env={**os.environ, "SIM_URL": sim.url},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen = []
    try:
        while proc.poll() is None:
            out = run_cli("status", job, "--json")
            assert out.returncode == 0, out.stderr
            seen.append(json.loads(out.stdout))
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
    live = [s for s in seen if s["state"] == "running" and s["running"] > 0]
    assert live, seen
    assert len(live) >= 3, f"too few samples while running: {seen}"
    for s in live:
        assert s["total"] == 100 and s["running"] <= 5
        assert s["done"] + s["failed"] + s["pending"] + s["running"] == s["total"]
        assert {k["key"] for k in s["keys"]} <= {"…0001", "…0002"}
    dones = [s["done"] for s in live]
    assert dones == sorted(dones) and dones[-1] > dones[0]
    final = json.loads(run_cli("status", job, "--json").stdout)
    assert (final["state"], final["done"], final["pending"], final["running"]) == (
        "finished",
        100,
        0,
        0,
    )
    assert sum(k["requests"] for k in final["keys"]) >= 100
    assert all(
        set(k) >= {"key", "requests", "tokens", "rate_limited", "state"} for k in final["keys"]
    )
    human = run_cli("status", job)
    assert "100/100 (100.0%)" in human.stdout


def test_demo_runs_with_no_server_and_reports_where_results_are(tmp_path: Path) -> None:
    result = run_cli("demo", "--items", "60", "--dir", tmp_path / "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "job 'demo' finished" in result.stdout
    assert "60 done, 0 failed" in result.stdout
    db = sqlite3.connect(tmp_path / "demo" / "results.db")
    rows = db.execute("SELECT id, summary FROM summaries").fetchall()
    db.close()
    assert len(rows) == 60 and all(s.startswith("Summary: Summarise:") for _, s in rows)
    assert str(tmp_path / "demo" / "results.db") in result.stdout


def test_verify_compares_source_store_and_sink(tmp_path: Path) -> None:
    job = local_job(tmp_path, 12)
    assert run_cli("run", job).returncode == 0
    good = run_cli("verify", job, "--checksum")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "source:  12 items" in good.stdout and "sink:    12 rows" in good.stdout
    assert "checksum: sha256:" in good.stdout and good.stdout.rstrip().endswith("OK")
    checksum = next(line for line in good.stdout.splitlines() if "sha256" in line)

    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    (tmp_path / "out.jsonl").write_text("\n".join([*lines[1:], '{"id": "ghost", "n": 0}']) + "\n")
    bad = run_cli("verify", job, "--checksum")
    assert bad.returncode == 1
    assert "missing: 1 done but not in the sink (e.g. k0)" in bad.stdout
    assert "extra:   1 in the sink but not in the source (e.g. ghost)" in bad.stdout
    assert checksum not in bad.stdout and "MISMATCH" in bad.stdout


def test_verify_expects_no_row_from_an_item_whose_task_returned_none(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(
        "from pathlib import Path\nimport paceline as pl\nHERE = Path(__file__).parent\n"
        "job = pl.Job('some', source=[{'id': str(n)} for n in range(10)],\n"
        "             sink=pl.JSONLSink(HERE / 'out.jsonl'))\n"
        "@job.task\nasync def t(item, ctx):\n"
        "    return {'n': 1} if int(item.id) % 2 else None\n"
    )
    assert run_cli("run", tmp_path / "job.py").returncode == 0
    check = run_cli("verify", tmp_path / "job.py")
    assert check.returncode == 0, check.stdout
    assert "sink:    5 rows" in check.stdout and "missing: 0" in check.stdout
