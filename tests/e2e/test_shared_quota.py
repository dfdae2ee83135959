"""Workers on several processes share every key's quota through Redis (--limiter)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from tests.conftest import PrivateRedis, RedisTarget, SimFactory
from tests.e2e.jobs import finish_workers, start_worker, write_shared_keys_job

from paceline.sim import KeyLimits


def start(job: Path, env: dict[str, str], limiter: str) -> subprocess.Popen[str]:
    return start_worker(job, env, "--limiter", limiter)


@pytest.mark.slow
def test_four_workers_on_one_redis_keep_each_keys_pace_together(
    tmp_path: Path, sim_server: SimFactory, pg_dsn: str, redis_url: RedisTarget
) -> None:
    # 2 keys × 120/minute = 4 requests/s for the job as a whole. Four workers with meters
    # of their own would each send that (16/s, done in about 4 s); sharing the meters in
    # Redis, the four together keep to 4/s and draw no 429.
    sim = sim_server(latency="fixed:0.05", limits=KeyLimits(rpm=120))
    items, per_second = 72, 2 * 120 / 60
    job = write_shared_keys_job(tmp_path, items, rpm=120)
    env = {**os.environ, "PG_DSN": pg_dsn, "PACELINE_STORE": pg_dsn, "SIM_URL": sim.url}
    limiter = f"{redis_url.url}?prefix={redis_url.prefix}"
    started = time.monotonic()
    finish_workers([start(job, env, limiter) for _ in range(4)])
    elapsed = time.monotonic() - started
    stats = httpx.get(sim.url + "/_sim/stats").json()["total"]
    assert stats["ok"] == items and stats["rate_limited"] == 0, stats
    bursts = 2 * 2  # each key's meter may start with a small burst
    assert elapsed >= (items - bursts) / per_second * 0.95, elapsed


@pytest.mark.slow
def test_redis_restarted_mid_run_neither_crashes_the_workers_nor_draws_a_storm(
    tmp_path: Path, sim_server: SimFactory, pg_dsn: str, private_redis: PrivateRedis
) -> None:
    sim = sim_server(latency="fixed:0.05", limits=KeyLimits(rpm=240))
    job = write_shared_keys_job(tmp_path, 160, rpm=240)  # 8/s: about 20 s of work
    env = {**os.environ, "PG_DSN": pg_dsn, "PACELINE_STORE": pg_dsn, "SIM_URL": sim.url}
    limiter = f"{private_redis.url}?prefix=restart-{uuid.uuid4().hex[:6]}:"
    workers = [start(job, env, limiter) for _ in range(2)]
    time.sleep(6)
    private_redis.kill()  # its state is gone: it kept nothing on disk
    time.sleep(1)
    private_redis.start()
    finish_workers(workers)
    stats = httpx.get(sim.url + "/_sim/stats").json()["total"]
    assert stats["ok"] == 160, stats
    assert stats["rate_limited"] <= 2, stats  # no storm: at most a stray one
