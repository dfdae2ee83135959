"""Graceful stop on the first SIGINT/SIGTERM, immediate stop on the second, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from tests.conftest import SimFactory, paceline_cmd, read_jsonl, run_cli
from tests.e2e.jobs import write_sim_job


def _start(job: Path, sim_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        paceline_cmd("run", job, *args),
        cwd=job.parent,
        env={**os.environ, "SIM_URL": sim_url},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The run's output once it exits; a run that hangs is killed, not left behind."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def _wait_for_in_flight(job: Path, deadline: float = 20.0) -> dict[str, object]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        out = run_cli("status", job, "--json", cwd=job.parent)
        if out.returncode == 0:
            status = json.loads(out.stdout)
            if status["state"] == "running" and status["running"]:
                return status
        time.sleep(0.2)
    raise AssertionError("the run never showed items in flight")


def _sim_ok(url: str) -> int:
    return int(httpx.get(f"{url}/_sim/stats").json()["total"]["ok"])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_lets_in_flight_items_finish_then_exits_130(
    tmp_path: Path, sim_server: SimFactory, signum: int
) -> None:
    sim = sim_server(latency="fixed:1.5")
    job = write_sim_job(tmp_path, 60, concurrency=6)
    proc = _start(job, sim.url)
    _wait_for_in_flight(job)
    proc.send_signal(signum)
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 10, "in-flight items should end well within grace"
    assert "stopped (interrupted)" in out
    assert "Traceback" not in err

    status = json.loads(run_cli("status", job, "--json", cwd=tmp_path).stdout)
    assert status["running"] == 0 and status["state"] == "stopped"
    assert 0 < status["done"] < 60
    # Every answer the provider gave before the stop was kept: nothing in flight was dropped.
    assert status["done"] == _sim_ok(sim.url)
    assert len(read_jsonl(tmp_path / "out.jsonl")) == status["done"]

    rest = run_cli("run", job, cwd=tmp_path, env={"SIM_URL": sim_server(latency="0").url})
    assert rest.returncode == 0, rest.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == [f"it-{n:05d}" for n in range(60)]


@pytest.mark.slow
def test_a_graceful_stop_with_automatic_concurrency_ends_once_in_flight_items_do(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    # The autoscaler adds workers while the run goes; one added as the stop begins must
    # not take another worker's end mark (that worker then waited out the whole grace).
    sim = sim_server(latency="lognormal:0.25,0.4")
    job = write_sim_job(tmp_path, 5000, concurrency=None)
    for _ in range(3):
        proc = _start(job, sim.url)
        _wait_for_in_flight(job)
        time.sleep(2.0)  # long enough for the autoscaler to grow the workers
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = _finish(proc, timeout=60)
        assert proc.returncode == 130, err
        assert time.monotonic() - started < 10, "the stop waited out the grace"
    status = json.loads(run_cli("status", job, "--json", cwd=tmp_path).stdout)
    assert status["running"] == 0 and 0 < status["done"] < 5000


@pytest.mark.slow
def test_a_run_stopped_by_max_items_with_automatic_concurrency_exits(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="uniform:0.05,0.2")
    job = write_sim_job(tmp_path, 5000, concurrency=None)
    job.write_text(job.read_text().replace("pl.KeyPool(", "pl.KeyPool(rpm=6000, keys="))
    for n in range(1, 4):
        proc = _start(job, sim.url, "--max-items", "600", "--progress", "none")
        out, err = _finish(proc, timeout=60)
        assert proc.returncode == 0, err
        assert "--max-items" in out
        status = json.loads(run_cli("status", job, "--json", cwd=tmp_path).stdout)
        assert status["done"] == 600 * n


@pytest.mark.slow
def test_second_sigint_stops_at_once_and_the_next_run_finishes_cleanly(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="fixed:20")
    job = write_sim_job(tmp_path, 40, concurrency=8)
    proc = _start(job, sim.url, "--grace", "60")
    _wait_for_in_flight(job)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 5, "a second Ctrl+C must not wait for the grace period"
    assert "Traceback" not in err

    status = json.loads(run_cli("status", job, "--json", cwd=tmp_path).stdout)
    assert status["done"] == 0 and status["running"] == 0 and status["pending"] == 40

    rest = run_cli("run", job, cwd=tmp_path, env={"SIM_URL": sim_server(latency="0").url})
    assert rest.returncode == 0, rest.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == [f"it-{n:05d}" for n in range(40)]
