"""Chaos, the short version for CI: ``benchmarks/chaos.py`` with a handful of kills.

Each scenario kills ``paceline run`` at random moments while the simulated provider answers
5xx, hangs and goes down, or while the job's PostgreSQL connections are dropped; then a run
to the end; then every item must be done (or failed with its error) exactly once in the
sink. The long runs and their figures are in RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from benchmarks import chaos
from tests.conftest import SimFactory, paceline_cmd, run_cli

FAST = {"hang_seconds": 2.0, "outage_seconds": 1.0, "outage_every": 4.0, "life": (0.6, 1.8)}


@pytest.fixture
def postgres(pg_dsn: str) -> None:
    """PostgreSQL is reachable (chaos makes databases of its own, and drops them)."""


def check(r: chaos.Report) -> None:
    assert r.exactly_once, r.line()
    assert r.signals == r.scenario.kills, r.line()
    assert not r.anomalies, r.anomalies
    # Retries cover 5xx at 5 % and a one-second outage many times over: none fails for good.
    assert r.failed == 0, (r.failed_examples, r.line())
    assert r.final_exit == 0, r.line()


@pytest.mark.parametrize("sink", ["sqlite", "postgres"])
def test_kills_through_5xx_hangs_and_an_outage_leave_every_item_once(
    tmp_path: Path, sink: str, request: pytest.FixtureRequest
) -> None:
    if sink == "postgres":
        request.getfixturevalue("postgres")
    scenario = chaos.Scenario(
        sink=sink,
        store="postgres" if sink == "postgres" else "sqlite",
        faults=frozenset({"5xx", "hangs", "outage"}),
        kills=4,
        items=300,
        seed=11,
        faults_in_final=True,  # an outage as the last items run does not end it early
        **FAST,  # type: ignore[arg-type]
    )
    r = chaos.run_scenario(scenario, workdir=tmp_path)
    check(r)
    assert r.outages >= 1, r.line()


def test_graceful_stops_while_database_connections_drop_leave_every_item_once(
    tmp_path: Path, postgres: None
) -> None:
    # A PostgresSink on the SQLite store: rows first, then the statuses, as a user's table;
    # every connection to its database is ended about every second.
    scenario = chaos.Scenario(
        sink="postgres",
        store="sqlite",
        signal="term",
        faults=frozenset({"5xx", "dbdrop"}),
        kills=3,
        items=300,
        seed=12,
        dbdrop_every=1.0,
        grace=2.0,
        life=(0.8, 2.0),
    )
    r = chaos.run_scenario(scenario, workdir=tmp_path)
    check(r)
    assert r.dbdrops >= 1, r.line()
    assert all(code in ("130", "0") for code in r.exits), r.exits


def test_an_outage_the_job_lives_through_fails_no_item_for_good(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    # Two attempts within a tenth of a second: items taken during a three-second outage
    # would run out of attempts for sure if the run did not pause (the circuit breaker).
    sim = sim_server(latency="uniform:0.02,0.1")
    scenario = chaos.Scenario(items=400, retries=1, backoff=(0.05, 0.1), rate=3000)
    job = chaos.write_job(tmp_path, scenario, sim.url, None)
    (tmp_path / "logs").mkdir()
    proc = subprocess.Popen(
        paceline_cmd("run", job, "--progress", "none"),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "PACELINE_STORE"},
    )
    try:
        deadline = time.monotonic() + 30
        while httpx.get(sim.url + "/_sim/stats").json()["total"]["ok"] < 50:
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.1)
        sim.outage(3.0)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 1), err
    r = chaos.Report(scenario)
    chaos.check(job, scenario, None, r)
    assert r.exactly_once, r.line()
    assert r.failed == 0, r.failed_examples
    assert proc.returncode == 0, err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_the_chaos_benchmark_runs_from_the_command_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "benchmarks/chaos.py", "--sink", "jsonl", "--signal", "int2",
         "--kills", "2", "--items", "120", "--faults", "5xx", "--seed", "3"],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "jsonl sink/sqlite store, int2 ×2, 5xx: OK" in out.stdout
    assert "| jsonl / sqlite | int2 | 5xx | 2/2 | 120 | 120 | 0 |" in out.stdout


EARLY_JOB = """
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    "early",
    source=pl.JSONL(HERE / "items.jsonl", id="id"),
    sink=pl.JSONLSink(HERE / "out.jsonl"),
    concurrency=32,
    backoff=pl.Backoff(base=0.05, cap=0.2),
)


@job.task
async def work(item, ctx):
    body = {{"model": "m", "messages": [{{"role": "user", "content": item.id}}]}}
    r = await ctx.http.post({url!r} + "/v1/chat/completions", json=body,
                            headers={{"authorization": "Bearer sk-early-0001"}})
    r.raise_for_status()
    return {{"ok": True}}
"""


def test_a_run_that_meets_an_outage_at_its_end_does_not_exit_0_with_items_left(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="fixed:0.01")
    (tmp_path / "items.jsonl").write_text("".join(f'{{"id": "i{n:03d}"}}\n' for n in range(20)))
    job = tmp_path / "job.py"
    job.write_text(EARLY_JOB.format(url=sim.url))
    sim.outage(6.0)  # the provider is down as the run starts: every item meets it
    out = subprocess.run(
        paceline_cmd("run", job, "--progress", "none"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "PACELINE_STORE"},
    )
    status = json.loads(run_cli("status", job, "--json", cwd=tmp_path).stdout)
    left = status["pending"] + status["running"]
    assert out.returncode != 0 or left == 0, (out.returncode, status["done"], left, out.stdout)
    assert (status["done"], left) == (20, 0), out.stdout
