"""Faults of the provider: an outage pauses the run, hung requests do not stall it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.conftest import SimFactory

import paceline as pl
from paceline.sim import KeyLimits, SimConfig, SimServer, parse_latency


class Watcher:
    """A reporter that keeps every snapshot's circuit, and asks nothing."""

    def __init__(self) -> None:
        self.circuits: list[dict[str, Any]] = []

    async def follow(self, engine: Any) -> None:
        while True:
            circuit = engine.snapshot().circuit
            if circuit:
                self.circuits.append(circuit)
            await asyncio.sleep(0.1)

    def note(self, message: str) -> None:
        return None

    def finish(self, result: Any) -> None:
        return None


def job_on(url: str, tmp_path: Path, items: int, **options: Any) -> pl.Job:
    job = pl.Job(
        "faults",
        source=[{"id": f"i{n:04d}"} for n in range(items)],
        sink=pl.JSONLSink(tmp_path / "out.jsonl"),
        backoff=pl.Backoff(base=0.1, cap=0.5),
        **options,
    )

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        body = {"model": "m", "messages": [{"role": "user", "content": item.id}]}
        r = await ctx.http.post(url + "/v1/chat/completions", json=body)
        r.raise_for_status()
        return {"ok": True}

    return job


async def test_an_outage_pauses_the_run_and_fails_no_item(tmp_path: Path) -> None:
    config = SimConfig(default_limits=KeyLimits(), latency=parse_latency("fixed:0.01"))
    sim = SimServer(config)
    sim.start()
    port = sim.port
    # retries=1: without the pause, items would fail for good during a 4-second outage
    job = job_on(sim.url, tmp_path, 600, retries=1, concurrency=8,
                 keys=pl.KeyPool(["sk-test-outage-0123456789"]))  # fmt: skip
    watcher = Watcher()
    run = asyncio.create_task(job.run_async(store=tmp_path / "s.db", reporter=watcher))
    await asyncio.sleep(1.0)
    await asyncio.to_thread(sim.stop)  # the provider goes away...
    await asyncio.sleep(4.0)
    back = SimServer(config, port=port)  # ...and comes back on the same address
    back.start()
    try:
        result = await asyncio.wait_for(run, timeout=60)
    finally:
        back.stop()
    assert (result.exit_code, result.snapshot.done, result.snapshot.failed) == (0, 600, 0)
    assert watcher.circuits, "the run never paused during the outage"
    assert watcher.circuits[0]["state"] == "open"
    assert any("resuming" in note for note in result.snapshot.notes)


async def test_hung_requests_are_cut_and_the_rest_keep_their_pace(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    # 5 % of the requests hang for 30 s; 8 workers, 400 items of 10 ms each
    sim = sim_server(latency="fixed:0.01", hang_rate=0.05, hang_seconds=30.0, seed=5)
    job = job_on(sim.url, tmp_path, 400, retries=5, concurrency=8,
                 keys=pl.KeyPool(["sk-test-hangs-0123456789"]))  # fmt: skip
    started = time.monotonic()
    result = await asyncio.wait_for(job.run_async(store=tmp_path / "s.db"), timeout=120)
    elapsed = time.monotonic() - started
    assert (result.exit_code, result.snapshot.done) == (0, 400)
    assert elapsed < 20, f"{elapsed:.1f} s: hung requests held the run up"


async def test_waiting_for_the_keys_pace_is_no_timeout_and_no_outage(tmp_path: Path) -> None:
    # A fixed window of 25 requests per 8 s: the first 25 go at once (the automatic
    # timeout learns they take 10 ms: its 5 s floor), then 25 workers wait about 8 s for
    # the reset: the key's pace, not a hung provider.
    config = SimConfig(default_limits=KeyLimits(), latency=parse_latency("fixed:0.01"))
    sim = SimServer(config)
    sim.start()
    keys = pl.KeyPool(["sk-test-paced-0123456789"], limits=[pl.Limit("25/8s", fixed=True)])
    job = job_on(sim.url, tmp_path, 50, retries=0, concurrency=25, keys=keys)
    watcher = Watcher()
    try:
        result = await asyncio.wait_for(
            job.run_async(store=tmp_path / "s.db", reporter=watcher), timeout=120
        )
    finally:
        sim.stop()
    assert (result.exit_code, result.snapshot.done, result.snapshot.failed) == (0, 50, 0)
    assert not watcher.circuits, "waiting for the key's pace was taken for an outage"
