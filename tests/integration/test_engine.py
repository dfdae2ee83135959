"""The engine in-process: pipeline, retries, stored due times, threads, keys, real HTTP."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import SimFactory, read_jsonl

import paceline as pl
from paceline.sim import KeyLimits


def rows_of(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in read_jsonl(path)}


def item_row(store: Path, item_id: str) -> Any:
    db = sqlite3.connect(store)
    try:
        return db.execute(
            "SELECT status, attempts, not_before, last_error FROM items WHERE id=?", (item_id,)
        ).fetchone()
    finally:
        db.close()


async def test_a_free_slot_takes_the_next_item_without_waiting_for_a_slow_one(
    tmp_path: Path,
) -> None:
    # The slow item finishes only once every other item is done: an engine that works in
    # batches ("start N, wait for all N") would never get there.
    others_done = asyncio.Event()
    finished: list[str] = []
    items = [{"id": "slow"}, *({"id": f"fast-{n}"} for n in range(200))]
    job = pl.Job("pipe", source=items, sink=pl.JSONLSink(tmp_path / "out.jsonl"))

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        if item.id == "slow":
            await others_done.wait()
        else:
            await asyncio.sleep(0.001)
            finished.append(item.id)
            if len(finished) == 200:
                others_done.set()
        return {"order": len(finished)}

    result = await asyncio.wait_for(
        job.run_async(store=tmp_path / "s.db", concurrency=4), timeout=20
    )
    assert result.exit_code == 0
    rows = rows_of(tmp_path / "out.jsonl")
    assert len(rows) == 201 and rows["slow"]["order"] == 200


async def test_a_plain_def_task_runs_in_threads_off_the_event_loop(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    seen: set[int] = set()
    job = pl.Job(
        "sync",
        source=[{"id": str(n), "n": n} for n in range(50)],
        sink=pl.SQLiteSink(tmp_path / "out.db", table="t"),
    )

    @job.task
    def work(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        seen.add(threading.get_ident())
        return {"square": item.data["n"] ** 2}

    result = await job.run_async(store=tmp_path / "s.db", concurrency=4)
    assert result.exit_code == 0
    assert seen and loop_thread not in seen
    db = sqlite3.connect(tmp_path / "out.db")
    assert dict(db.execute("SELECT id, square FROM t")) == {str(n): n * n for n in range(50)}
    db.close()


async def test_a_retry_due_time_is_stored_and_survives_a_restart(tmp_path: Path) -> None:
    clock = pl.FakeClock(start=1_800_000_000.0)
    store = tmp_path / "s.db"
    calls: list[int] = []
    job = pl.Job("later", source=[{"id": "a"}], sink=pl.JSONLSink(tmp_path / "out.jsonl"))

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise pl.Retryable("upstream busy", retry_after=3600)
        return {"attempt": ctx.attempt}

    first = job.run_async(store=store, clock=clock)
    task = asyncio.create_task(first)
    # The store file is what survives; poll it (it has no event to wait on).
    while not store.exists() or (item_row(store, "a") or ("",))[0] != "retry":  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    _, attempts, due, error = item_row(store, "a")
    assert (attempts, due) == (1, 1_800_000_000.0 + 3600)
    assert error == "Retryable: upstream busy"
    task.cancel()  # the run ends while the retry waits
    with pytest.raises(asyncio.CancelledError):
        await task

    clock.advance(3599)
    second = asyncio.create_task(job.run_async(store=store, clock=clock))
    await asyncio.sleep(0.5)
    assert calls == [1] and not second.done()  # restarted, and waiting: not due yet

    clock.advance(1)
    late = await asyncio.wait_for(second, timeout=10)
    assert late.exit_code == 0 and calls == [1, 2]
    assert rows_of(tmp_path / "out.jsonl") == {"a": {"id": "a", "attempt": 2}}


async def test_a_429_is_retried_after_the_wait_its_answer_asked_for(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="0", limits=KeyLimits(rpm=1))
    clock = pl.FakeClock(start=1_800_000_000.0)
    job = pl.Job(
        "rl",
        source=[{"id": "a"}, {"id": "b"}],
        keys=pl.KeyPool(["sk-only-key-000000000000001"]),
        retries=3,
    )

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": item.id}]}
        r = await ctx.http.post(f"{sim.url}/v1/chat/completions", json=body)
        r.raise_for_status()

    result = await job.run_async(store=tmp_path / "s.db", clock=clock, sequential=True, max_items=2)
    assert result.snapshot.done == 1
    (limited,) = [i for i in ("a", "b") if item_row(tmp_path / "s.db", i)[0] == "retry"]
    _, attempts, due, error = item_row(tmp_path / "s.db", limited)
    assert attempts == 1 and error is not None and error.startswith("HTTP 429")
    # The sim's 1/min window frees a slot within a minute; the stored due time is the
    # server's retry-after, not a blind backoff.
    assert due is not None and 0 < due - clock.time() <= 60


async def test_transient_5xx_and_hangs_are_retried_until_done(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="0.002", error_rate=0.3, hang_rate=0.05, hang_seconds=5, seed=11)
    job = pl.Job(
        "flaky",
        source=[{"id": str(n)} for n in range(80)],
        sink=pl.JSONLSink(tmp_path / "out.jsonl"),
        keys=pl.KeyPool(["k" * 20]),
        retries=10,
        http_timeout=0.3,
        backoff=pl.Backoff(base=0.01, cap=0.05),
    )

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        body = {"model": "m", "messages": [{"role": "user", "content": "hello " + item.id}]}
        r = await ctx.http.post(f"{sim.url}/v1/chat/completions", json=body)
        r.raise_for_status()
        return {"text": r.json()["choices"][0]["message"]["content"]}

    result = await job.run_async(store=tmp_path / "s.db", concurrency=8)
    assert (result.exit_code, result.snapshot.done) == (0, 80)
    rows = rows_of(tmp_path / "out.jsonl")
    assert all(rows[str(n)]["text"] == f"Summary: hello {n}" for n in range(80))
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{sim.url}/_sim/stats")).json()["total"]
    assert stats["errors"] > 0  # faults really happened and were absorbed


async def test_a_permanent_http_error_fails_at_once_with_its_reason(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="0")
    job = pl.Job(
        "gh",
        source=[{"id": "octo/hello"}, {"id": "octo/missing-repo"}],
        keys=pl.KeyPool(["ghp_" + "a" * 36], auth="token"),
        retries=5,
    )

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        r = await ctx.http.get(f"{sim.url}/repos/{item.id}")
        r.raise_for_status()
        return {"name": r.json()["full_name"]}

    result = await job.run_async(store=tmp_path / "s.db")
    assert (result.exit_code, result.snapshot.done, result.snapshot.failed) == (1, 1, 1)
    status, attempts, _, error = item_row(tmp_path / "s.db", "octo/missing-repo")
    assert (status, attempts) == ("failed", 1)
    assert error is not None and error.startswith("HTTP 404 Not Found from GET ")


async def test_a_rejected_key_is_disabled_and_work_goes_on_with_the_others(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    bad, good = "sk-revoked-000000000000000bad", "sk-good-00000000000000000good"
    sim = sim_server(latency="0", revoked=frozenset({bad}))
    job = pl.Job(
        "keys", source=[{"id": str(n)} for n in range(30)], keys=pl.KeyPool([bad, good]), retries=3
    )

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        r = await ctx.http.post(f"{sim.url}/v1/chat/completions", json=body)
        r.raise_for_status()

    result = await job.run_async(store=tmp_path / "s.db", concurrency=1)
    assert result.snapshot.done + result.snapshot.failed == 30
    states = {k["key"]: k["state"] for k in result.snapshot.keys}
    assert states == {"…0bad": "disabled", "…good": "ready"}
    store_bytes = (tmp_path / "s.db").read_bytes()
    assert bad.encode() not in store_bytes and good.encode() not in store_bytes


async def test_when_every_key_is_rejected_the_run_stops_and_says_why(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    key = "sk-revoked-0000000000000000001"
    sim = sim_server(latency="0", revoked=frozenset({key}))
    job = pl.Job(
        "nokeys", source=[{"id": str(n)} for n in range(20)], keys=pl.KeyPool([key]), retries=3
    )

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> None:
        r = await ctx.http.post(f"{sim.url}/v1/chat/completions", json={})
        r.raise_for_status()

    with pytest.raises(pl.NoUsableKey, match="no usable key"):
        await job.run_async(store=tmp_path / "s.db", concurrency=1)
    db = sqlite3.connect(tmp_path / "s.db")
    counts = dict(db.execute("SELECT status, count(*) FROM items GROUP BY status"))
    db.close()
    assert counts.get("running", 0) == 0  # nothing left claimed: the next run takes all
    assert sum(counts.values()) == 20
