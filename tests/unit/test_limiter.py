"""The limiter through KeyPool: reservations, key choice, learning from answers.

Everything runs on a :class:`FakeClock`: acquirers are tasks, and :func:`run_until` moves
the clock from one sleeper's wake-up time to the next, so a grant is recorded at the exact
fake time the limiter let it go.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from paceline.clock import FakeClock
from paceline.feedback import Feedback, Verdict, Window
from paceline.keys import Cost, Key, KeyPool, NoUsableKey
from paceline.limiter import RECOVERY, Lease, QuotaWait, Stopping
from paceline.meters.local import GcraMeter

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
#: Grant times are sums of many float intervals at epoch magnitude: a grant a few microseconds
#: inside a window's end is rounding (1 ppm of the rate), far below any network's jitter.
EPSILON = 1e-3


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


def names(n: int) -> list[str]:
    return [f"sk-test-{i}-0123456789abcdef" for i in range(n)]


async def drain() -> None:
    """Let every task that can run now take its turn (no time passes)."""
    for _ in range(12):
        await asyncio.sleep(0)


def next_wake(clock: FakeClock) -> float | None:
    live = [t for t, _, future in clock._sleepers if not future.done()]
    return min(live) if live else None


async def run_until(clock: FakeClock, end: float) -> None:
    """Move the clock to ``end``, stopping at every wake-up time on the way."""
    await drain()
    while (wake := next_wake(clock)) is not None and wake <= end:
        clock.advance(max(0.0, wake - clock.time()))
        await drain()
    if clock.time() < end:
        clock.advance(end - clock.time())
        await drain()


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` that any half-open window ``[s, s + window)`` holds."""
    times = sorted(times)
    return max(
        bisect.bisect_left(times, t + window - EPSILON) - bisect.bisect_left(times, t)
        for t in times
    )


class Run:
    """Background acquirers on one pool, recording (time, key) of every grant."""

    def __init__(self, pool: KeyPool, clock: FakeClock) -> None:
        self.pool, self.clock = pool, clock
        self.grants: list[tuple[float, Key]] = []
        self.leases: list[Lease] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def _one(self, cost: Cost | None, hold: bool) -> Lease:
        lease = await self.pool.acquire(cost)
        self.grants.append((self.clock.time(), lease.key))
        self.leases.append(lease)
        if not hold:
            self.pool.release(lease)
        return lease

    def acquire(self, cost: Cost | None = None, *, hold: bool = False) -> asyncio.Task[Any]:
        """One acquirer; ``hold`` keeps its lease (and concurrency slot) until released."""
        return self.start(self._one(cost, hold))

    def saturate(self, workers: int, cost: Cost | None = None) -> None:
        """``workers`` acquirers that ask again as soon as they get a slot."""

        async def loop() -> None:
            while True:
                await self._one(cost, hold=False)

        for _ in range(workers):
            self.start(loop())

    def times(self, key: Key | None = None) -> list[float]:
        return [t for t, k in self.grants if key is None or k is key]

    def granted_keys(self) -> list[Key]:
        return [k for _, k in self.grants]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture
async def runs(clock: FakeClock) -> AsyncIterator[Callable[[KeyPool], Run]]:
    made: list[Run] = []

    def make(pool: KeyPool) -> Run:
        run = Run(pool, clock)
        made.append(run)
        return run

    yield make
    for run in made:
        await run.stop()


def ok(**kw: Any) -> Feedback:
    return Feedback(Verdict.OK, None, **kw)


def rate_limited(retry_at: float | None) -> Feedback:
    return Feedback(Verdict.RATE_LIMITED, retry_at, scope="minute", reason="429 rate limit")


def bound(pool: KeyPool, clock: FakeClock, **kw: Any) -> list[str]:
    events: list[str] = []
    pool.bind(clock, events.append, **kw)
    return events


# -- reservations --------------------------------------------------------------------------


async def test_concurrent_acquirers_get_distinct_slots(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    run = runs(KeyPool(names(1), rpm=60, clock=clock))  # one a second, burst 1
    for _ in range(5):
        run.acquire()
    await run_until(clock, T0 + 10)
    assert run.times() == [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4]


@pytest.mark.parametrize("count", [15, 60, 500])
async def test_a_saturated_key_never_overruns_any_window_and_keeps_the_rate(
    clock: FakeClock, runs: Callable[[KeyPool], Run], count: int
) -> None:
    run = runs(KeyPool(names(1), rpm=count, clock=clock))
    run.saturate(workers=12)
    await run_until(clock, T0 + 4 * 60)
    times = run.times()
    burst = GcraMeter(KeyPool(names(1), rpm=count).limits[0]).burst
    assert times[:burst] == [T0] * burst  # a small burst at the start
    assert max_in_window(times, 60.0) <= count
    steady = sum(T0 + 60 <= t < T0 + 180 for t in times)
    assert steady >= 0.98 * 2 * count


async def test_several_keys_add_up_and_each_keeps_its_own_limit(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(3), rpm=15, clock=clock)
    run = runs(pool)
    run.saturate(workers=8)
    await run_until(clock, T0 + 3 * 60)
    for key in pool.keys:
        assert max_in_window(run.times(key), 60.0) <= 15
    assert sum(T0 + 60 <= t < T0 + 120 for t in run.times()) == 45


async def test_each_request_goes_to_the_key_that_can_admit_it_soonest(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(2), tpm=1000, clock=clock)
    a, b = pool.keys
    big = await pool.acquire(Cost(tokens=950))  # a's window has no room for 100 until T0+60
    assert big.key is a
    run = runs(pool)
    for _ in range(3):
        run.acquire(Cost(tokens=100))
    await run_until(clock, T0 + 20)
    assert run.granted_keys() == [b, b, b]  # not round robin: b admits them sooner


async def test_tokens_are_reserved_by_cost_and_settled_from_the_answer(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    estimated, settled = (
        KeyPool(names(1), tpm=1000, clock=clock),
        KeyPool(names(1), tpm=1000, clock=clock),
    )
    for pool in (estimated, settled):
        lease = await pool.acquire(Cost(tokens=800))
        pool.settle(lease, ok(tokens_used=100 if pool is settled else None))
        pool.release(lease)
    assert settled.keys[0].tokens == 100
    assert estimated.keys[0].tokens == 800
    run_e, run_s = runs(estimated), runs(settled)
    run_e.acquire(Cost(tokens=800))
    run_s.acquire(Cost(tokens=800))
    await run_until(clock, T0 + 120)
    assert run_s.times()[0] < run_e.times()[0]
    assert run_s.times()[0] < T0 + 10  # 100 tokens' worth of the window, not 800


async def test_keys_of_a_shared_pool_share_one_meter(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    shared = KeyPool(names(2), rpm=60, shared=True, clock=clock)
    apart = KeyPool(names(2), rpm=60, clock=clock)
    assert shared.keys[0].group is shared.keys[1].group
    assert len(shared.groups()) == 1
    assert len(apart.groups()) == 2
    run_shared, run_apart = runs(shared), runs(apart)
    for _ in range(4):
        run_shared.acquire()
        run_apart.acquire()
    await run_until(clock, T0 + 10)
    assert run_shared.times() == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert run_apart.times() == [T0, T0, T0 + 1, T0 + 1]


async def test_adding_pools_keeps_both_groups_and_their_limits(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool_a = KeyPool(names(2), rpm=60, shared=True, clock=clock)
    pool_b = KeyPool(["sk-other-0123456789abcdef"], rpm=6, auth="token", clock=clock)
    merged = pool_a + pool_b
    assert [k.masked for k in merged.keys] == [k.masked for k in pool_a.keys + pool_b.keys]
    groups = [group for _, group in merged.groups()]
    assert groups == [pool_a.keys[0].group, pool_b.keys[0].group]
    assert merged.keys[2].auth == "token"
    assert merged.limits == pool_a.limits + pool_b.limits
    run = runs(merged)
    run.saturate(workers=6)
    await run_until(clock, T0 + 59.9)
    a_times = [t for t, k in run.grants if k in pool_a.keys]
    assert max_in_window(a_times, 60.0) <= 60
    assert max_in_window(run.times(pool_b.keys[0]), 60.0) <= 6
    assert len(a_times) >= 59
    assert len(run.times(pool_b.keys[0])) == 6


# -- answers -------------------------------------------------------------------------------


async def test_a_429_cools_that_key_only_and_slows_its_request_meters(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(2), rpm=60, tpm=100_000, clock=clock)
    a, b = pool.keys
    lease = await pool.acquire()
    assert lease.key is a
    pool.settle(lease, rate_limited(T0 + 10))
    pool.release(lease)
    assert a.state == "cooling"
    assert a.until == T0 + 10
    assert a.rate_limited == 1
    requests_meter, tokens_meter = a.group.gcra
    assert requests_meter.factor < 1
    assert tokens_meter.factor == 1  # token meters keep their rate
    assert all(m.factor == 1 for m in b.group.gcra)

    run = runs(pool)
    run.saturate(workers=4)
    await run_until(clock, T0 + 9.99)
    assert set(run.granted_keys()) == {b}  # b keeps going meanwhile
    assert len(run.times()) >= 9
    await run_until(clock, T0 + 30)
    assert a in run.granted_keys()
    assert min(run.times(a)) == pytest.approx(T0 + 10)


async def test_a_429_at_the_edge_of_a_window_the_meters_know_does_not_slow_them(
    clock: FakeClock,
) -> None:
    # The provider counts the same 60 a minute the meter does; a request at the very edge
    # of its sliding minute drew a 429 saying so: the limit is right, the pace stays.
    pool = KeyPool(names(1), rpm=60, clock=clock)
    bound(pool, clock)
    (meter,) = pool.keys[0].group.gcra
    lease = await pool.acquire()
    edge = window(limit=60, remaining=0, reset_at=T0 + 1, period=60.0)
    pool.settle(lease, Feedback(Verdict.RATE_LIMITED, T0 + 1, (edge,), scope="minute"))
    pool.release(lease)
    assert pool.keys[0].state == "cooling"
    assert meter.factor == 1
    clock.advance(5)
    lease = await pool.acquire()
    lower = window(limit=50, remaining=0, reset_at=T0 + 6, period=60.0)  # a lower limit
    pool.settle(lease, Feedback(Verdict.RATE_LIMITED, T0 + 6, (lower,), scope="minute"))
    pool.release(lease)
    assert pool.keys[0].group.gcra[0].limit.count == 50  # believed, and...
    clock.advance(10)
    lease = await pool.acquire()
    pool.settle(lease, rate_limited(clock.time() + 1))  # ...a 429 nothing explains slows
    pool.release(lease)
    assert pool.keys[0].group.gcra[0].factor < 1


async def test_a_slowed_key_recovers_its_rate_over_time(clock: FakeClock) -> None:
    pool = KeyPool(names(1), rpm=60, clock=clock)
    (meter,) = pool.keys[0].group.gcra
    for _ in range(2):
        lease = await pool.acquire()
        pool.settle(lease, rate_limited(clock.time() + 1))
        pool.release(lease)
        clock.advance(1)
    slowed = meter.factor
    assert slowed == pytest.approx(0.85**2)
    assert meter.interval > 1.0
    clock.advance(RECOVERY / 10)
    lease = await pool.acquire()
    pool.settle(lease, ok())
    assert slowed < meter.factor < 1
    clock.advance(RECOVERY)
    pool.settle(lease, ok())
    assert meter.factor == 1
    assert pool.keys[0].state == "ready"
    assert pool.keys[0].consecutive_429 == 0


async def test_every_slowed_request_meter_of_a_key_recovers(clock: FakeClock) -> None:
    pool = KeyPool(names(1), limits=["60/minute", "3000/hour"], clock=clock)
    lease = await pool.acquire()
    pool.settle(lease, rate_limited(T0 + 1))
    assert [m.factor for m in pool.keys[0].group.gcra] == [0.85, 0.85]
    clock.advance(RECOVERY)
    pool.settle(lease, ok())
    assert [m.factor for m in pool.keys[0].group.gcra] == [1.0, 1.0]


async def test_429s_in_a_row_without_advice_wait_longer_each_time(clock: FakeClock) -> None:
    pool = KeyPool(names(1), clock=clock)
    key = pool.keys[0]
    waits = []
    for _ in range(4):
        lease = await pool.acquire()
        pool.settle(lease, rate_limited(None))
        waits.append(key.until - clock.time())
        clock.advance(key.until - clock.time())
    assert waits == [1.0, 2.0, 4.0, 8.0]


async def test_a_key_out_of_its_daily_quota_is_parked_until_the_reset(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), clock=clock)
    events = bound(pool, clock)
    midnight = utc(2023, 11, 15, 8, 0)  # Los Angeles
    spent = Feedback(Verdict.QUOTA_EXHAUSTED, midnight, scope="day", reason="daily quota exhausted")
    first = await pool.acquire()
    second = await pool.acquire()  # a second request in flight gets the same answer
    for lease in (first, second):
        pool.settle(lease, spent)
        pool.release(lease)
    key = pool.keys[0]
    assert key.state == "parked"
    assert key.until == midnight
    assert events == [f"key {key.masked} parked: daily quota exhausted"]
    run = runs(pool)
    task = run.acquire()
    await run_until(clock, midnight - 1)
    assert not task.done()
    await run_until(clock, midnight + 1)
    assert run.times() == [midnight]


async def test_an_invalid_key_is_disabled_with_one_masked_message(clock: FakeClock) -> None:
    pool = KeyPool(names(2), clock=clock)
    events = bound(pool, clock)
    a, b = pool.keys
    first, second = await pool.acquire(), await pool.acquire()
    third = await pool.acquire()
    assert (first.key, second.key, third.key) == (a, b, a)
    invalid = Feedback(Verdict.KEY_INVALID, None, reason="key rejected: API key not valid")
    pool.settle(first, invalid)
    pool.settle(third, invalid)  # a second answer in flight says the same
    assert a.state == "disabled"
    assert events == [f"key {a.masked} disabled for this run: key rejected: API key not valid"]
    assert a.secret not in events[0]
    assert [k.key for k in [await pool.acquire() for _ in range(3)]] == [b, b, b]
    assert pool.usable() == [b]


async def test_no_usable_key_once_every_key_is_disabled(clock: FakeClock) -> None:
    pool = KeyPool(names(2), clock=clock)
    for _ in range(2):
        lease = await pool.acquire()
        pool.settle(lease, Feedback(Verdict.KEY_INVALID, None, reason="key rejected"))
    with pytest.raises(NoUsableKey) as info:
        await pool.acquire()
    message = str(info.value)
    assert all(k.masked in message for k in pool.keys)
    assert not any(k.secret in message for k in pool.keys)


async def test_a_waiting_acquirer_moves_on_when_its_key_is_disabled(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(2), rpm=1, clock=clock)
    b = pool.keys[1]
    first = await pool.acquire()
    await pool.acquire()
    run = runs(pool)
    run.acquire()  # waits for a's next slot, a minute away
    await run_until(clock, T0 + 20)
    pool.settle(first, Feedback(Verdict.KEY_INVALID, None, reason="key rejected"))
    await run_until(clock, T0 + 61)
    assert run.granted_keys() == [b]


async def test_when_every_key_is_out_of_quota_the_run_can_stop_and_say_until_when(
    clock: FakeClock,
) -> None:
    pool = KeyPool(names(2), rpd=2, clock=clock)
    bound(pool, clock, stop_when_out_of_quota=True)
    for _ in range(4):
        await pool.acquire()
    with pytest.raises(QuotaWait) as info:
        await pool.acquire()
    assert info.value.until == utc(2023, 11, 15)  # the next UTC midnight
    assert pool.limiter.quota_wait(clock.time()) == utc(2023, 11, 15)


async def test_parked_keys_raise_quota_wait_at_the_earliest_reset(clock: FakeClock) -> None:
    pool = KeyPool(names(2), clock=clock)
    bound(pool, clock, stop_when_out_of_quota=True)
    for until in (T0 + 7200, T0 + 3600):
        lease = await pool.acquire()
        pool.settle(lease, Feedback(Verdict.QUOTA_EXHAUSTED, until, scope="hour"))
    with pytest.raises(QuotaWait) as info:
        await pool.acquire()
    assert info.value.until == T0 + 3600


async def test_without_stop_the_run_waits_for_the_reset_and_goes_on(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), rpd=2, clock=clock)
    bound(pool, clock)
    run = runs(pool)
    for _ in range(3):
        run.acquire()
    await run_until(clock, utc(2023, 11, 15) + 1)
    assert run.times() == [T0, T0, utc(2023, 11, 15)]
    assert pool.limiter.waiting == 0
    assert pool.limiter.waited == 1


async def test_close_makes_every_waiting_acquirer_raise_stopping(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), rpm=60, concurrency=1, clock=clock)
    bound(pool, clock)
    holder = await pool.acquire()  # holds the one concurrency slot
    run = runs(pool)
    waiting = [run.acquire() for _ in range(3)]  # slots at +1 s, +2 s, +3 s
    far = KeyPool(names(1), rpd=1, clock=clock)
    bound(far, clock)
    await far.acquire()
    beyond = run.start(far.acquire())  # tomorrow: beyond the horizon
    await run_until(clock, T0 + 1.5)  # the first is now waiting for the slot
    assert pool.limiter.waiting == 3
    pool.limiter.close()
    far.limiter.close()
    await drain()
    for task in [*waiting, beyond]:
        assert task.done()
        assert isinstance(task.exception(), Stopping)
    with pytest.raises(Stopping):
        await pool.acquire()
    pool.release(holder)
    bound(pool, clock)  # a new run opens the limiter again
    again = run.acquire()
    await run_until(clock, T0 + 10)
    assert again.done()
    assert again.result().key is pool.keys[0]


async def test_a_concurrency_limit_makes_the_next_acquirer_wait_for_a_release(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), limits=["2 concurrent"], clock=clock)
    run = runs(pool)
    first, second, third = (run.acquire(hold=True) for _ in range(3))
    await run_until(clock, T0 + 60)
    assert first.done() and second.done()
    assert not third.done()
    pool.release(first.result())
    pool.release(first.result())  # releasing twice frees one slot only
    await drain()
    assert third.done()
    fourth = run.acquire(hold=True)
    await drain()
    assert not fourth.done()
    pool.release(second.result())
    await drain()
    assert fourth.done()


async def test_a_concurrency_slot_goes_to_a_key_that_has_one_free(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(2), concurrency=1, clock=clock)
    a, b = pool.keys
    run = runs(pool)
    first, second = run.acquire(hold=True), run.acquire(hold=True)
    await drain()
    assert run.granted_keys() == [a, b]
    third = run.acquire(hold=True)
    await drain()
    assert not third.done()
    pool.release(second.result())  # b is free again: the waiter takes it
    await drain()
    assert third.done()
    assert third.result().key is b
    assert not first.cancelled()


async def test_a_concurrency_slot_is_not_lost_when_its_waiter_is_cancelled(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), concurrency=1, clock=clock)
    run = runs(pool)
    holder = run.acquire(hold=True)
    await drain()
    second, third = run.acquire(hold=True), run.acquire(hold=True)
    await drain()
    pool.release(holder.result())
    second.cancel()  # e.g. a task timeout, before it could take the slot
    await drain()
    assert third.done()


async def test_a_cancelled_acquirer_gives_its_slot_back(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), rpm=60, clock=clock)
    run = runs(pool)
    run.acquire()
    doomed = run.acquire()  # reserved the slot at +1 s
    await drain()
    doomed.cancel()
    await drain()
    run.acquire()
    await run_until(clock, T0 + 5)
    assert run.times() == [T0, T0 + 1]


# -- limits learned from answers -----------------------------------------------------------


def window(**kw: Any) -> Window:
    fields: dict[str, Any] = {
        "unit": "requests",
        "limit": None,
        "remaining": None,
        "reset_at": None,
        "period": None,
    }
    return Window(**(fields | kw))


async def test_a_limit_announced_but_not_configured_is_learned(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), clock=clock)
    events = bound(pool, clock)
    key = pool.keys[0]
    assert pool.describe(clock.time())[0]["limits"] == []
    lease = await pool.acquire()
    announced = window(limit=100, remaining=99, period=60.0)
    pool.settle(lease, ok(windows=(announced,)))
    pool.settle(lease, ok(windows=(announced,)))  # the same window again: learned once
    assert [m.limit.describe() for m in key.group.gcra] == ["100/minute"]
    assert key.group.learned == [key.group.gcra[0].limit]
    assert events == [f"key {key.masked}: learned limit 100/minute"]
    assert pool.describe(clock.time())[0]["limits"] == ["100/minute"]
    run = runs(pool)
    run.saturate(workers=4)
    await run_until(clock, T0 + 120)
    assert max_in_window(run.times(), 60.0) <= 100


async def test_one_window_read_with_lengths_that_differ_is_learned_once(
    clock: FakeClock,
) -> None:
    # A smooth window's length is worked out from each answer; readings of one window
    # differ. They are one limit, not one each (the slowest of which would govern).
    pool = KeyPool(names(1), clock=clock)
    bound(pool, clock)
    key = pool.keys[0]
    lease = await pool.acquire()
    for period in (60.0, 46.0, 70.0, 85.0):
        pool.settle(lease, ok(windows=(window(limit=600, remaining=590, period=period),)))
    assert [m.limit.describe() for m in key.group.gcra] == ["600/minute"]
    pool.settle(lease, ok(windows=(window(limit=600, remaining=590, period=86400.0),)))
    assert len(key.group.meters()) == 2  # 600 a day as well: another limit


async def test_a_daily_limit_announced_is_learned_as_a_daily_counter(clock: FakeClock) -> None:
    pool = KeyPool(names(1), clock=clock)
    bound(pool, clock)
    lease = await pool.acquire()
    pool.settle(lease, ok(windows=(window(limit=1000, remaining=990, period=86400.0),)))
    assert [m.limit.describe() for m in pool.keys[0].group.day] == ["1000/day"]


async def test_a_lower_announced_limit_lowers_the_configured_one(clock: FakeClock) -> None:
    pool = KeyPool(names(1), rpm=500, rpd=10_000, clock=clock)
    events = bound(pool, clock)
    key = pool.keys[0]
    lease = await pool.acquire()
    pool.settle(lease, ok(windows=(window(limit=100, remaining=50, period=60.0),)))
    assert [m.limit.describe() for m in key.group.meters()] == ["100/minute", "10000/day"]
    assert events == [f"key {key.masked}: limit lowered to 100/minute"]
    pool.settle(lease, ok(windows=(window(limit=800, remaining=50, period=60.0),)))
    assert key.group.gcra[0].limit.count == 100  # a higher announcement does not raise it


async def test_a_window_of_unknown_length_leaves_the_other_windows_alone(
    clock: FakeClock,
) -> None:
    # X-RateLimit-Limit: 100 without a period: the per-minute limit, not the daily one
    pool = KeyPool(names(1), rpm=100, rpd=10_000, clock=clock)
    key = pool.keys[0]
    lease = await pool.acquire()
    pool.settle(lease, ok(windows=(window(limit=100, remaining=0, reset_at=T0 + 30),)))
    assert [m.limit.describe() for m in key.group.meters()] == ["100/minute", "10000/day"]
    assert key.group.day[0].used(clock.time()) == 1
    assert pool.limiter._ready_at(key, Cost(), clock.time()) == pytest.approx(T0 + 30)


@pytest.mark.parametrize("configured", [True, False])
async def test_a_spent_window_makes_the_key_wait_for_its_reset(
    clock: FakeClock, runs: Callable[[KeyPool], Run], configured: bool
) -> None:
    pool = KeyPool(names(1), rpm=100 if configured else None, clock=clock)
    bound(pool, clock)
    lease = await pool.acquire()
    spent = window(limit=100, remaining=0, reset_at=T0 + 42, period=60.0)
    pool.settle(lease, ok(windows=(spent,)))
    pool.release(lease)
    run = runs(pool)
    task = run.acquire()
    await run_until(clock, T0 + 41.9)
    assert not task.done()
    await run_until(clock, T0 + 50)
    assert run.times() == [pytest.approx(T0 + 42)]


async def test_a_spent_hourly_window_parks_the_key_until_its_reset(clock: FakeClock) -> None:
    # GitHub's primary limit: 403 with remaining 0; the key has no limits configured
    pool = KeyPool(names(1), clock=clock)
    bound(pool, clock, stop_when_out_of_quota=True)
    key = pool.keys[0]
    lease = await pool.acquire()
    reset = T0 + 3000
    spent = window(limit=5000, remaining=0, reset_at=reset, period=3600.0, name="core")
    pool.settle(lease, Feedback(Verdict.QUOTA_EXHAUSTED, reset, (spent,), scope="hour"))
    assert key.state == "parked"
    assert key.until == reset
    with pytest.raises(QuotaWait):
        await pool.acquire()


async def test_a_late_429_does_not_unpark_a_parked_key(clock: FakeClock) -> None:
    pool = KeyPool(names(1), clock=clock)
    bound(pool, clock)
    key = pool.keys[0]
    one, two = await pool.acquire(), await pool.acquire()
    pool.settle(one, Feedback(Verdict.QUOTA_EXHAUSTED, T0 + 7200, scope="day"))
    pool.settle(two, rate_limited(T0 + 5))  # answered after the first, sent alongside
    assert key.state == "parked"
    assert key.until == T0 + 7200


async def test_an_hourly_quota_does_not_spend_the_daily_one(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), rpd=1000, clock=clock)
    bound(pool, clock)
    lease = await pool.acquire()
    pool.settle(lease, Feedback(Verdict.QUOTA_EXHAUSTED, T0 + 1800, scope="hour"))
    pool.release(lease)
    run = runs(pool)
    run.acquire()
    await run_until(clock, T0 + 1900)
    assert run.times() == [T0 + 1800]


# -- bursts after waits --------------------------------------------------------------------


async def test_requests_held_back_by_a_cooling_key_do_not_burst_when_it_is_back(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), rpm=15, clock=clock)
    bound(pool, clock)
    lease = await pool.acquire()
    pool.settle(lease, rate_limited(T0 + 20))
    pool.release(lease)
    run = runs(pool)
    run.saturate(workers=10)
    await run_until(clock, T0 + 300)
    times = run.times()
    assert times[0] == T0 + 20
    assert max_in_window([T0, *times], 60.0) <= 15


async def test_requests_waiting_for_midnight_are_counted_in_the_new_day(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), rpd=3, clock=clock)
    bound(pool, clock)
    for _ in range(3):
        await pool.acquire()
    midnight = utc(2023, 11, 15)
    clock.advance(midnight - 10 - clock.time())  # ten seconds to midnight
    run = runs(pool)
    for _ in range(5):
        run.acquire()
    await run_until(clock, midnight + 60)
    assert run.times() == [midnight] * 3  # the new day's three, not five
    assert pool.keys[0].group.day[0].used(clock.time()) == 3


async def test_requests_waiting_for_an_in_flight_slot_do_not_burst_when_slots_free(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), rpm=60, concurrency=4, clock=clock)
    run = runs(pool)
    answered = 0

    async def worker() -> None:
        nonlocal answered
        while True:
            lease = await pool.acquire()
            run.grants.append((clock.time(), lease.key))
            # the first four answers are slow, then the provider is fast again
            await clock.sleep(40.0 if answered < 4 else 0.5)
            answered += 1
            pool.release(lease)

    for _ in range(30):
        run.start(worker())
    await run_until(clock, T0 + 200)
    times = run.times()
    assert max_in_window(times, 60.0) <= 60
    assert sum(T0 + 100 <= t < T0 + 160 for t in times) >= 59  # and the rate comes back


# -- what the dashboard shows --------------------------------------------------------------


def hms(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


async def test_describe_shows_one_row_per_key(clock: FakeClock) -> None:
    pool = KeyPool(
        names(4),
        limits=["15/minute", "1500/day", "1000000 tokens/minute", "8 concurrent"],
        day_resets="America/Los_Angeles",
        clock=clock,
    )
    bound(pool, clock)
    d = pool.keys[3]
    for key in pool.keys:
        key.group.day[0].restore(100, clock.time())
    la = await pool.acquire(Cost(tokens=500))
    lb = await pool.acquire()
    lc = await pool.acquire()
    pool.settle(la, ok(tokens_used=700))
    pool.settle(lb, rate_limited(T0 + 30))
    pool.settle(lc, Feedback(Verdict.QUOTA_EXHAUSTED, T0 + 2 * 86400, scope="day"))
    ld = await pool.acquire()
    assert ld.key is d
    pool.settle(ld, Feedback(Verdict.KEY_INVALID, None, reason="key rejected (HTTP 401)"))

    rows = pool.describe(clock.time())
    assert [row["key"] for row in rows] == [k.masked for k in pool.keys]
    assert all(row["key"].startswith("…") for row in rows)
    text = repr(rows)
    assert not any(k.secret in text for k in pool.keys)
    limits = ["15/minute", "1000000 tokens/minute", "1500/day", "8 concurrent"]
    assert all(row["limits"] == limits for row in rows)
    ra, rb, rc, rd = rows
    assert ra["state"] == "ready"
    assert (ra["requests"], ra["tokens"]) == (1, 700)
    assert ra["today"] == [{"unit": "requests", "used": 101, "limit": 1500}]
    assert rb["state"] == f"cooling until {hms(T0 + 30)}"
    assert rb["until"] == T0 + 30
    assert rb["rate_limited"] == 1
    when = dt.datetime.fromtimestamp(T0 + 2 * 86400).strftime("%Y-%m-%d %H:%M")
    assert rc["state"] == f"parked until {when}"
    assert rc["today"] == [{"unit": "requests", "used": 1500, "limit": 1500}]
    assert rd["state"] == "disabled"
    assert rd["reason"] == "key rejected (HTTP 401)"
    assert rd["until"] is None
    assert rd["errors"] == 1

    later = T0 + 31
    assert pool.describe(later)[1]["state"] == "ready"


async def test_describe_says_when_a_key_is_parked_for_the_run(clock: FakeClock) -> None:
    pool = KeyPool(names(1), clock=clock)
    lease = await pool.acquire()
    pool.settle(lease, Feedback(Verdict.QUOTA_EXHAUSTED, None, reason="quota exhausted"))
    (row,) = pool.describe(clock.time())
    assert row["state"] == "parked for this run"
    assert row["reason"] == "quota exhausted"


async def test_describe_is_a_pure_read(clock: FakeClock) -> None:
    pool = KeyPool(names(1), rpd=1500, tpm=1000, clock=clock)
    bound(pool, clock)
    start = pool.limiter.day_usage(clock.time())[0][1]
    pool.limiter.restore_day(pool.keys[0].fingerprint, start, "requests", 100)
    await pool.acquire(Cost(tokens=400))
    tomorrow = utc(2023, 11, 15, 12)
    assert pool.describe(tomorrow)[0]["today"][0]["used"] == 0  # a new day, to look at
    assert pool.describe(clock.time())[0]["today"][0]["used"] == 101  # and today kept
    assert pool.limiter._ready_at(pool.keys[0], Cost(tokens=700), T0) == pytest.approx(
        T0 + 60, abs=0.01
    )


# -- what the engine persists and restores -------------------------------------------------


async def test_day_usage_names_each_group_once_and_restore_keeps_the_larger_count(
    clock: FakeClock,
) -> None:
    pool = KeyPool(names(2), rpd=10, limits=["5000 tokens/day"], shared=True, clock=clock)
    bound(pool, clock)
    leader = pool.keys[0].fingerprint
    midnight = utc(2023, 11, 14)
    assert pool.limiter.day_usage(clock.time()) == [
        (leader, midnight, "tokens", 0.0),
        (leader, midnight, "requests", 0.0),
    ]
    pool.limiter.restore_day(leader, midnight, "requests", 7)
    pool.limiter.restore_day(leader, midnight, "requests", 3)  # an older write: keep 7
    pool.limiter.restore_day(leader, midnight - 86400, "tokens", 4000)  # yesterday: no
    await pool.acquire(Cost(tokens=100))
    assert pool.limiter.day_usage(clock.time()) == [
        (leader, midnight, "tokens", 100.0),
        (leader, midnight, "requests", 8.0),
    ]
    for _ in range(2):
        await pool.acquire()
    run_out = asyncio.ensure_future(pool.acquire())
    await drain()
    assert not run_out.done()  # the eleventh waits for tomorrow
    run_out.cancel()


async def test_plan_capacity_uses_the_limits_in_force(clock: FakeClock) -> None:
    from paceline.plan import capacity

    pool = KeyPool(names(2), rpm=500, clock=clock)
    bound(pool, clock)
    assert capacity(pool).per_minute == 1000
    lease = await pool.acquire()
    pool.settle(lease, ok(windows=(window(limit=100, remaining=50, period=60.0),)))
    assert capacity(pool).per_minute == 600  # the provider said 100 for this key
    learned = KeyPool(names(1), clock=clock)
    lease = await learned.acquire()
    learned.settle(lease, ok(windows=(window(limit=1000, remaining=9, period=86400.0),)))
    assert capacity(learned).per_day == 1000


async def test_a_pool_bound_to_a_local_backend_keeps_its_keys_meters(clock: FakeClock) -> None:
    from paceline.meters import open_meter_backend

    pool = KeyPool(names(1), rpm=60, clock=clock)
    backend = open_meter_backend("local", clock=clock)
    pool.bind(clock, lambda message: None, backend=backend)
    await pool.limiter.start()
    await pool.acquire()
    assert pool.limiter.backend is backend
    assert pool.keys[0].group.gcra[0].tat == pytest.approx(T0 + 1)  # the key's own meter
    await pool.limiter.aclose()


# -- what answers say that is not a limit --------------------------------------------------


async def test_an_absurd_wait_ignored_is_told_once_per_key(clock: FakeClock) -> None:
    pool = KeyPool(names(2), clock=clock)
    events = bound(pool, clock)
    ignored = "ignored Retry-After of 300000000000 s: more than a day"
    for _ in range(3):
        lease = await pool.acquire()
        pool.settle(lease, Feedback(Verdict.RATE_LIMITED, None, ignored=ignored))
        pool.release(lease)
        clock.advance(60)
    told = [e for e in events if ignored in e]
    assert told == [f"key {k.masked}: {ignored}" for k in pool.keys]


async def test_a_concurrency_limit_answered_caps_the_keys_requests_in_flight(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), clock=clock)
    bound(pool, clock)
    held = [await pool.acquire() for _ in range(12)]
    secondary = Feedback(
        Verdict.RATE_LIMITED, T0 + 5, scope="secondary", reason="GitHub secondary rate limit"
    )
    pool.settle(held[-1], secondary)  # the twelfth in flight was one too many
    for lease in held:
        pool.release(lease)
    (cap,) = pool.limiter.view(pool.keys[0].fingerprint).limits
    assert cap.describe() == "8 concurrent"  # below the 11 that went through
    run = runs(pool)
    for _ in range(12):
        run.acquire(hold=True)
    await run_until(clock, T0 + 10)
    assert run.times() == [T0 + 5] * 8  # after the cooling, and no more than the cap


async def test_a_fixed_window_learned_from_the_answers_is_spent_then_waits_for_its_reset(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    pool = KeyPool(names(1), clock=clock)
    events = bound(pool, clock)
    lease = await pool.acquire()
    fixed = window(
        limit=5000, remaining=3, reset_at=T0 + 20, period=3600.0, fixed=True, reset_slack=1.0
    )
    pool.settle(lease, ok(windows=(fixed,)))
    pool.release(lease)
    assert events == [f"key {pool.keys[0].masked}: learned limit 5000/hour fixed"]
    run = runs(pool)
    run.saturate(workers=6)
    await run_until(clock, T0 + 20.9)
    assert run.times() == [T0] * 3  # what was left, at once; then nothing before the reset
    (row,) = pool.describe(clock.time())
    assert row["state"].startswith("parked until")
    assert row["reason"] == "5000/hour fixed spent until its reset"
    await run_until(clock, T0 + 21.5)
    assert len(run.times()) > 3
    assert min(run.times()[3:]) == pytest.approx(T0 + 21, abs=1e-3)  # within a second


async def test_fixed_windows_of_tokens_or_days_wait_for_the_reset_they_announce(
    clock: FakeClock, runs: Callable[[KeyPool], Run]
) -> None:
    # An IETF gateway announcing fixed token and daily windows: metered as a token log and
    # a day counter, which an announced reset with nothing left still exhausts.
    pool = KeyPool(names(1), clock=clock)
    bound(pool, clock)
    lease = await pool.acquire()
    tokens = window(
        unit="tokens", limit=10_000, remaining=0, reset_at=T0 + 40, period=60.0, fixed=True
    )
    pool.settle(lease, ok(windows=(tokens,)))
    pool.release(lease)
    assert pool.describe(clock.time())[0]["limits"] == ["10000 tokens/minute fixed"]
    run = runs(pool)
    run.acquire(Cost(tokens=100))
    await run_until(clock, T0 + 39.9)
    assert run.times() == []
    await run_until(clock, T0 + 45)
    assert run.times() == [pytest.approx(T0 + 40, abs=0.01)]


@pytest.mark.parametrize(("up_front", "counted"), [(True, 400), (False, 260)])
async def test_tokens_a_provider_counts_up_front_stay_counted(
    clock: FakeClock, up_front: bool, counted: int
) -> None:
    # OpenAI counts a request's max_tokens when it admits it and gives nothing back;
    # Anthropic counts what the answer used.
    pool = KeyPool(names(1), tpm=10_000, clock=clock)
    bound(pool, clock)
    lease = await pool.acquire(Cost(tokens=400))
    pool.settle(lease, Feedback(Verdict.OK, None, tokens_used=260, charged_up_front=up_front))
    assert pool.keys[0].tokens == counted
