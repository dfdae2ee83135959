"""Many workers on one job: `paceline run --store postgresql://…` processes side by side."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import psycopg
import pytest
from tests.conftest import run_cli
from tests.e2e.jobs import finish_workers, start_worker, write_worker_job


def status(job: Path, env: dict[str, str]) -> dict[str, object]:
    out = run_cli("status", job, "--json", cwd=job.parent, env=env)
    assert out.returncode == 0, out.stderr
    data: dict[str, object] = json.loads(out.stdout)
    return data


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture
def env(pg_dsn: str) -> dict[str, str]:
    return {**os.environ, "PG_DSN": pg_dsn, "PACELINE_STORE": pg_dsn}


@pytest.mark.slow
def test_four_workers_killed_twenty_times_end_with_every_item_once(
    tmp_path: Path, env: dict[str, str], pg_dsn: str
) -> None:
    items = 6_000
    job = write_worker_job(tmp_path, items, concurrency=4, latency=(0.02, 0.06))
    rng = random.Random(20261129)
    workers = [start_worker(job, env) for _ in range(4)]
    kills = 0
    try:
        while kills < 24:
            time.sleep(rng.uniform(0.2, 0.6))
            victim = rng.randrange(len(workers))
            if workers[victim].poll() is not None:
                _, err = workers[victim].communicate()
                assert workers[victim].returncode == 0, err
                break  # the job is finishing: the kills so far still count
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].communicate()
            kills += 1
            workers[victim] = start_worker(job, env)
        assert kills >= 20, f"the job finished after {kills} kills; make it longer"
    finally:
        finish_workers(workers, timeout=120)
    final = status(job, env)
    assert (final["total"], final["done"], final["failed"]) == (items, items, 0)
    assert final["pending"] == final["running"] == 0
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id, n, square FROM results").fetchall()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == items
    assert all(r[0] == f"it-{r[1]:05d}" and r[2] == r[1] ** 2 for r in rows)


def test_status_lists_every_worker_and_stop_stops_them_all(
    tmp_path: Path, env: dict[str, str]
) -> None:
    job = write_worker_job(tmp_path, 20_000, concurrency=4, latency=(0.05, 0.1))
    workers = [start_worker(job, env) for _ in range(3)]
    try:
        wait_for(lambda: len(status(job, env)["workers"]) == 3)  # type: ignore[arg-type]
        now = status(job, env)
        assert now["state"] == "running"
        for w in now["workers"]:  # type: ignore[attr-defined]
            assert {"host", "pid", "started_at", "heartbeat", "done", "rate_now"} <= set(w)
        assert {w["pid"] for w in now["workers"]} == {p.pid for p in workers}  # type: ignore[attr-defined]

        stopped = run_cli("stop", job, cwd=tmp_path, env=env)
        assert stopped.returncode == 0 and "asked 3 worker(s) to stop" in stopped.stdout
        for w in workers:
            w.communicate(timeout=30)
            assert w.returncode == 130
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    after = status(job, env)
    assert after["workers"] == [] and after["running"] == 0
    assert 0 < after["done"] < 20_000  # type: ignore[operator]


def test_a_graceful_stop_of_one_worker_stops_only_that_one(
    tmp_path: Path, env: dict[str, str]
) -> None:
    job = write_worker_job(tmp_path, 3_000, concurrency=4, latency=(0.01, 0.03))
    first, second = start_worker(job, env), start_worker(job, env)
    try:
        wait_for(lambda: len(status(job, env)["workers"]) == 2)  # type: ignore[arg-type]
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
        assert first.returncode == 130
        _, err = second.communicate(timeout=120)
        assert second.returncode == 0, err  # it went on and finished the job
    finally:
        for w in (first, second):
            if w.poll() is None:
                w.kill()
                w.wait()
    final = status(job, env)
    assert (final["done"], final["pending"]) == (3_000, 0)


def test_max_items_holds_for_the_job_as_a_whole(tmp_path: Path, env: dict[str, str]) -> None:
    job = write_worker_job(tmp_path, 5_000, concurrency=4, latency=(0.01, 0.02))
    workers = [start_worker(job, env, "--max-items", "300") for _ in range(3)]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    assert status(job, env)["done"] == 300


def test_a_jsonl_sink_is_refused_when_a_second_worker_joins(
    tmp_path: Path, env: dict[str, str]
) -> None:
    job = write_worker_job(tmp_path, 20_000, sink="jsonl", concurrency=2, latency=(0.05, 0.1))
    first = start_worker(job, env)
    try:
        wait_for(lambda: len(status(job, env)["workers"]) == 1)  # type: ignore[arg-type]
        second = run_cli("run", job, "--progress", "none", cwd=tmp_path, env=env)
        assert second.returncode == 2
        assert "cannot be shared" in second.stderr and "PostgresSink" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)


def test_paceline_worker_joins_a_shared_job_and_refuses_a_sqlite_store(
    tmp_path: Path, env: dict[str, str]
) -> None:
    job = write_worker_job(tmp_path, 400, concurrency=4, latency=(0.005, 0.01))
    finish_workers([start_worker(job, env, command="worker") for _ in range(2)])
    assert status(job, env)["done"] == 400
    alone = {k: v for k, v in env.items() if k != "PACELINE_STORE"}
    refused = run_cli("worker", job, cwd=tmp_path, env=alone)
    assert refused.returncode == 2 and "PostgreSQL store" in refused.stderr
