"""Automatic concurrency: workers grow until the keys are the bound, limits known or not."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from paceline.clock import FakeClock
from paceline.engine.autoscale import AUTO_START, AUTOSCALE_EVERY, Autoscaler
from paceline.engine.quota import PoolRun
from paceline.engine.state import RunState
from paceline.feedback import Feedback, Verdict, Window
from paceline.keys import KeyPool

T0 = 1_700_000_000.0


class Queue:
    def __init__(self, size: int) -> None:
        self.size = size

    def qsize(self) -> int:
        return self.size


@dataclass
class Dispatcher:
    """Every worker busy, items waiting: the shape in which workers should grow."""

    size: int = AUTO_START
    queue: Queue = field(default_factory=lambda: Queue(100))

    @property
    def in_flight(self) -> int:
        return self.size

    def spawn(self, n: int) -> None:
        self.size += n

    def shrink(self, by: int) -> None:
        self.size -= by


@dataclass
class Attempts:
    seconds: float = 1.0


@dataclass
class Progress:
    done_run: int = 100
    failed_run: int = 0


def scaler(pool: KeyPool, clock: FakeClock, most: int = 512) -> tuple[Autoscaler, Dispatcher]:
    d = Dispatcher()
    run = PoolRun(pool, clock)
    a = Autoscaler(
        cast(Any, d), run, cast(Any, Attempts()), cast(Any, Progress()), RunState(), clock, most
    )
    return a, d


async def tick(clock: FakeClock, times: int) -> None:
    for _ in range(times):
        for _ in range(5):
            await asyncio.sleep(0)
        clock.advance(AUTOSCALE_EVERY)
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


async def test_a_pool_without_limits_grows_while_no_429_comes_back(clock: FakeClock) -> None:
    pool = KeyPool(["k1-0123456789abcdef"], clock=clock)
    pool.bind(clock, lambda message: None)
    assert pool.limited  # so the engine runs the autoscaler for it
    a, d = scaler(pool, clock, most=200)
    task = asyncio.ensure_future(a.run())
    await tick(clock, 6)
    assert d.size > 50  # half again every half second
    await tick(clock, 10)
    assert d.size == 200  # up to the job's concurrency: nothing known bounds it
    task.cancel()


async def test_once_a_limit_is_learned_littles_law_bounds_the_workers(
    clock: FakeClock,
) -> None:
    pool = KeyPool(["k1-0123456789abcdef"], clock=clock)
    pool.bind(clock, lambda message: None)
    lease = await pool.acquire()
    learned = Window("requests", 600, 599, T0 + 0.1, 60.0, "requests", False, 0.001)
    pool.settle(lease, Feedback(Verdict.OK, None, (learned,)))
    pool.release(lease)
    pool.keys[0].requests = 100  # one request per item
    a, d = scaler(pool, clock)
    task = asyncio.ensure_future(a.run())
    await tick(clock, 20)
    assert d.size == 10 * 1 * 1.5 + 2  # 10/s × 1 s per item × 1.5, + 2
    task.cancel()


async def test_a_fixed_window_with_room_bounds_nothing(clock: FakeClock) -> None:
    pool = KeyPool(["k1-0123456789abcdef"], clock=clock)
    pool.bind(clock, lambda message: None)
    lease = await pool.acquire()
    fixed = Window("requests", 5000, 300, T0 + 20, 3600.0, "core", True, 1.0)
    pool.settle(lease, Feedback(Verdict.OK, None, (fixed,)))
    pool.release(lease)
    a, d = scaler(pool, clock, most=300)
    task = asyncio.ensure_future(a.run())
    await tick(clock, 20)
    assert d.size == 300  # 300 left, to spend as fast as the job can
    task.cancel()


async def test_429s_shrink_the_workers(clock: FakeClock) -> None:
    pool = KeyPool(["k1-0123456789abcdef"], clock=clock)
    pool.bind(clock, lambda message: None)
    a, d = scaler(pool, clock)
    d.size = 40
    task = asyncio.ensure_future(a.run())
    await asyncio.sleep(0)
    pool.limiter.rejections += 1
    await tick(clock, 1)
    assert d.size == 30  # a quarter handed back
    task.cancel()


async def test_workers_waiting_for_a_reset_are_kept_for_it(clock: FakeClock) -> None:
    pool = KeyPool(["k1-0123456789abcdef"], clock=clock)
    pool.bind(clock, lambda message: None)
    lease = await pool.acquire()
    spent = Window("requests", 5000, 0, T0 + 20, 3600.0, "core", True, 1.0)
    pool.settle(lease, Feedback(Verdict.OK, None, (spent,)))
    pool.release(lease)
    a, d = scaler(pool, clock)
    d.size = 100
    pool.limiter.waiting = 100  # every worker waits for the window's reset
    task = asyncio.ensure_future(a.run())
    await tick(clock, 30)
    assert d.size == 100
    pool.limiter.waiting = 0
    task.cancel()
