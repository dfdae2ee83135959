"""The engine in-process: pipeline, retries, stored due times, threads, keys, real HTTP."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
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
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        return None  # the run is creating the store this moment
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


async def test_a_429_moves_the_request_to_another_key_and_the_task_never_sees_it(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    # Gemini-style keys (no rate-limit headers to learn from): the first key allows one
    # request a minute, and nobody told paceline. Its 429 cools that key alone and the
    # request goes on at once with the other key.
    first, second = "AIza-first-0000000000000001", "AIza-second-000000000000002"
    sim = sim_server(latency="0", keys={first: KeyLimits(rpm=1), second: KeyLimits(rpm=100)})
    keys = pl.KeyPool([first, second], auth="header:x-goog-api-key")
    statuses: list[int] = []
    job = pl.Job("rl", source=[{"id": str(n)} for n in range(4)], keys=keys, retries=0)

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> None:
        body = {"contents": [{"parts": [{"text": item.id}]}]}
        url = f"{sim.url}/v1beta/models/gemini-2.0-flash:generateContent"
        r = await ctx.http.post(url, json=body)
        statuses.append(r.status_code)
        r.raise_for_status()

    result = await job.run_async(store=tmp_path / "s.db", sequential=True)
    assert (result.exit_code, result.snapshot.done) == (0, 4)
    assert statuses == [200, 200, 200, 200]
    by_key = {k["key"]: k for k in result.snapshot.keys}
    assert by_key["…0001"]["rate_limited"] == 1 and by_key["…0002"]["rate_limited"] == 0
    assert by_key["…0001"]["state"].startswith("cooling until")
    assert by_key["…0002"]["state"] == "ready"


async def test_a_limit_announced_in_headers_is_learned_before_any_429(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    first, second = "sk-first-000000000000000001", "sk-second-00000000000000002"
    sim = sim_server(latency="0", keys={first: KeyLimits(rpm=1), second: KeyLimits(rpm=100)})
    job = pl.Job(
        "learn",
        source=[{"id": str(n)} for n in range(5)],
        keys=pl.KeyPool([first, second]),
        retries=0,
    )

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": item.id}]}
        (await ctx.http.post(f"{sim.url}/v1/chat/completions", json=body)).raise_for_status()

    result = await job.run_async(store=tmp_path / "s.db", sequential=True)
    assert result.exit_code == 0
    assert sum(k["rate_limited"] for k in result.snapshot.keys) == 0
    by_key = {k["key"]: k for k in result.snapshot.keys}
    assert by_key["…0001"]["limits"] == ["1/minute"] and by_key["…0001"]["requests"] == 1
    assert "key …0001: learned limit 1/minute" in result.snapshot.notes


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

    result = await job.run_async(store=tmp_path / "s.db", concurrency=1)
    assert (result.exit_code, result.stop_reason) == (2, "no usable key")
    assert any("no usable key left" in note for note in result.snapshot.notes)
    assert any("disabled" in note for note in result.snapshot.notes)
    db = sqlite3.connect(tmp_path / "s.db")
    counts = dict(db.execute("SELECT status, count(*) FROM items GROUP BY status"))
    db.close()
    assert counts.get("running", 0) == 0  # nothing left claimed: the next run takes all
    assert sum(counts.values()) == 20


async def test_concurrency_grows_until_the_keys_limits_are_the_bound(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    # 4 keys × 120/minute = 8 requests/s, each answer takes 2 s: ~16 requests must be in
    # flight (Little's law), twice the 8 workers a run starts with. Nobody sets a number.
    sim = sim_server(latency="fixed:2")
    keys = pl.KeyPool([f"sk-little-law-{n:014d}" for n in range(4)], rpm=120)
    peak_in_flight = 0
    in_flight = 0
    job = pl.Job("auto", source=[{"id": str(n)} for n in range(80)], keys=keys)

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> None:
        nonlocal in_flight, peak_in_flight
        in_flight += 1
        peak_in_flight = max(peak_in_flight, in_flight)
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": item.id}]}
            (await ctx.http.post(f"{sim.url}/v1/chat/completions", json=body)).raise_for_status()
        finally:
            in_flight -= 1

    result = await job.run_async(store=tmp_path / "s.db")
    assert (result.exit_code, result.snapshot.done) == (0, 80)
    assert peak_in_flight >= 16
    assert sum(k["rate_limited"] for k in result.snapshot.keys) == 0


async def test_sink_batches_adapt_to_how_long_a_write_takes(tmp_path: Path) -> None:
    # target 0.2 s per write: a sink taking 20 ms a row settles near 10 rows a batch;
    # a fast one grows to the maximum.
    async def run(seconds_per_row: float, n: int) -> tuple[list[int], int]:
        sizes: list[int] = []

        def sink(rows: list[dict[str, Any]]) -> None:
            time.sleep(seconds_per_row * len(rows))
            sizes.append(len(rows))

        job = pl.Job(
            "batches",
            source=[{"id": str(i)} for i in range(n)],
            sink=sink,
            batch=pl.Batch(min=10, max=1000, target=0.2),
            concurrency=64,
        )

        @job.task
        async def work(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
            return {"ok": 1}

        result = await job.run_async(store=tmp_path / f"{seconds_per_row}.db")
        assert result.snapshot.done == n and sum(sizes) == n
        return sizes, result.snapshot.batch_size

    slow, slow_size = await run(0.02, 200)
    fast, fast_size = await run(0.0, 3000)
    assert slow[0] == fast[0] == 100  # the first write, before anything is known
    assert 10 <= slow_size <= 15 and max(slow[1:]) <= 15
    assert fast_size == 1000 and max(fast[1:]) > 100


async def test_job_run_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    # As in a Jupyter notebook: a loop runs already, and `job.run()` is called from it.
    job = pl.Job("nb", source=[{"id": str(n)} for n in range(50)])

    @job.task
    async def work(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"seen": item.id}

    asyncio.get_running_loop()  # this test itself runs in a loop
    result = job.run(store=tmp_path / "s.db")
    assert (result.exit_code, result.snapshot.done) == (0, 50)


class _StopSoon:
    """A reporter that asks the run to stop after ``after`` seconds."""

    def __init__(self, after: float) -> None:
        self.after = after

    async def follow(self, engine: Any) -> None:
        await asyncio.sleep(self.after)
        engine.stop("interrupted")

    def note(self, message: str) -> None:
        return None

    def finish(self, result: Any) -> None:
        return None


async def test_a_task_that_swallows_the_limiters_signals_does_not_mark_items_done(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server()
    # One request a minute: every request after the first waits for its slot, and the
    # stop wakes them with the limiter's Stopping; the task catches every Exception.
    job = pl.Job(
        "swallow",
        source=[{"id": str(n)} for n in range(20)],
        sink=pl.JSONLSink(tmp_path / "out.jsonl"),
        keys=pl.KeyPool(["sk-test-swallow-0123456789"], rpm=1),
        concurrency=5,
    )

    @job.task
    async def careless(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        try:
            r = await ctx.http.post(sim.url + "/v1/chat/completions", json={"model": "m"})
            return {"status": r.status_code}
        except Exception as exc:
            return {"swallowed": type(exc).__name__}

    result = await job.run_async(store=tmp_path / "s.db", reporter=_StopSoon(1.0))
    assert result.interrupted
    rows = rows_of(tmp_path / "out.jsonl") if (tmp_path / "out.jsonl").exists() else {}
    assert all("swallowed" not in row for row in rows.values()), rows
    assert result.snapshot.done == len(rows) <= 2
    assert result.snapshot.pending == 20 - len(rows)


async def test_secret_fields_stay_out_of_the_store_and_errors_yet_reach_the_task(
    tmp_path: Path,
) -> None:
    source = tmp_path / "users.jsonl"
    users = [
        {"id": f"u{n}", "password": f"hunter-{n:04d}-secret", "ok": n % 3 != 0} for n in range(30)
    ]
    source.write_text("".join(json.dumps(u) + "\n" for u in users))
    job = pl.Job(
        "secrets",
        source=pl.JSONL(source),
        sink=pl.JSONLSink(tmp_path / "out.jsonl"),
        secret_fields=["password"],
        retries=0,
    )

    @job.task
    async def check(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        if not item.data["ok"]:
            raise ValueError(f"cannot use {item.data['password']}")
        return {"length": len(item.data["password"])}

    result = await job.run_async(store=tmp_path / ".paceline" / "s.db")
    assert (result.snapshot.done, result.snapshot.failed) == (20, 10)
    assert {r["length"] for r in read_jsonl(tmp_path / "out.jsonl")} == {len("hunter-0001-secret")}
    for path in (tmp_path / ".paceline").iterdir():
        data = path.read_bytes()
        assert not [u for u in users if u["password"].encode() in data], path.name
    db = sqlite3.connect(tmp_path / ".paceline" / "s.db")
    errors = [e for (e,) in db.execute("SELECT last_error FROM items WHERE status='failed'")]
    db.close()
    assert errors and all("***" in e and "hunter" not in e for e in errors)


def test_secret_fields_need_a_source_that_can_be_read_again() -> None:
    with pytest.raises(pl.ConfigError, match="read again"):
        pl.Job("x", source=iter([{"id": "a", "password": "p"}]), secret_fields=["password"])
