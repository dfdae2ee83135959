"""One contract for every meter backend: the local one and Redis (on a fake clock).

Each test talks to a backend the way the limiter does, passing ``now`` explicitly. A
``peer`` is another worker's backend: a second Redis connection with the same prefix (for
the local backend, the same meters: nothing is shared beyond the process).
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from paceline.clock import FakeClock
from paceline.limits import Cost, Limit, default_burst, parse_limit
from paceline.meters import (
    GroupSpec,
    KeyState,
    LocalBackend,
    MeterBackend,
    Refusal,
    Reservation,
    open_meter_backend,
)
from paceline.meters.protocol import CAP_RECOVERY, RECOVERY

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
MIDNIGHT = dt.datetime(2023, 11, 15, tzinfo=dt.UTC).timestamp()
FAR = 1e9  # a horizon nothing is beyond
#: Send times are sums of many float intervals at epoch magnitude (Redis keeps microseconds).
EPSILON = 1e-3
KEY = "fp-key-1"


@dataclass
class Meters:
    backend: MeterBackend
    peer: Callable[[], MeterBackend]
    shared: bool

    def group(
        self, *limits: str, gid: str = "g1", tz: str | None = None, keys: tuple[str, ...] = (KEY,)
    ) -> str:
        spec = GroupSpec(gid, tuple(parse_limit(x) for x in limits), tz, keys)
        self.backend.attach([spec])
        self._spec = spec
        return gid

    def other(self) -> MeterBackend:
        """Another worker, meters attached."""
        peer = self.peer()
        peer.attach([self._spec])
        return peer

    async def reserve(
        self, cost: Cost | None = None, now: float = T0, horizon: float = FAR
    ) -> Reservation:
        answer = await self.backend.reserve("g1", KEY, cost or Cost(), horizon=horizon, now=now)
        assert answer.reservation is not None, answer
        return answer.reservation

    async def burst(self, now: float = T0, most: int = 500) -> list[Reservation]:
        """Every request that may go at ``now`` (kept in flight), until one may not."""
        taken = []
        for _ in range(most):
            answer = await self.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=now)
            if answer.reservation is None or answer.reservation.at > now:
                if answer.reservation is not None:
                    self.backend.refund(answer.reservation, Cost())
                    self.backend.release(answer.reservation)
                break
            taken.append(answer.reservation)
        return taken


@pytest.fixture(params=["local", "redis"])
async def meters(request: pytest.FixtureRequest) -> AsyncIterator[Meters]:
    clock = FakeClock(start=T0)
    if request.param == "local":
        local = LocalBackend(clock=clock)
        yield Meters(local, lambda: local, shared=False)
        return
    target = request.getfixturevalue("redis_url")
    made: list[MeterBackend] = []

    def connect() -> MeterBackend:
        backend = open_meter_backend(target.url, prefix=target.prefix, clock=clock)
        made.append(backend)
        return backend

    yield Meters(connect(), connect, shared=True)
    for backend in made:
        await backend.aclose()


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` that any half-open window ``[s, s + window)`` holds."""
    times = sorted(times)
    return max(
        bisect.bisect_left(times, t + window - EPSILON) - bisect.bisect_left(times, t)
        for t in times
    )


def tokens_in_worst_window(sent: list[tuple[float, int]], window: float) -> int:
    return max(
        sum(size for at, size in sent if start <= at < start + window - EPSILON)
        for start, _ in sent
    )


# -- request windows (GCRA) ----------------------------------------------------------------


async def test_a_small_burst_goes_at_once_then_requests_are_spaced(meters: Meters) -> None:
    meters.group("600/minute")
    burst = default_burst(Limit(600, 60.0))
    interval = 60.0 / (600 - burst + 1)
    times = [(await meters.reserve()).at for _ in range(burst + 3)]
    assert times[:burst] == [T0] * burst
    gaps = [b - a for a, b in zip(times[burst - 1 :], times[burst:], strict=False)]
    assert gaps == pytest.approx([interval] * 3, abs=1e-5)


async def test_a_saturated_request_window_never_overruns_and_keeps_the_rate(
    meters: Meters,
) -> None:
    meters.group("120/minute")
    times: list[float] = []
    now = T0
    while now < T0 + 180:
        at = (await meters.reserve(now=now)).at
        times.append(at)
        now = at  # the next request is asked for when this one is sent
    assert max_in_window(times, 60.0) <= 120
    assert sum(T0 + 60 <= t < T0 + 120 for t in times) >= 0.98 * 120


async def test_a_reservation_beyond_the_horizon_is_refused_and_takes_nothing(
    meters: Meters,
) -> None:
    meters.group("60/minute")  # one a second, burst 1
    await meters.reserve()
    await meters.reserve()  # at T0 + 1
    answer = await meters.backend.reserve("g1", KEY, Cost(), horizon=0.5, now=T0)
    assert answer.reservation is None
    assert answer.refusal is Refusal.LATER
    assert answer.at == pytest.approx(T0 + 2)
    assert (await meters.reserve()).at == pytest.approx(T0 + 2)  # nothing was taken


async def test_a_refund_gives_the_slot_back(meters: Meters) -> None:
    meters.group("60/minute")
    await meters.reserve()
    second = await meters.reserve()
    assert second.at == pytest.approx(T0 + 1)
    meters.backend.refund(second, Cost())
    assert (await meters.reserve()).at == pytest.approx(T0 + 1)


async def test_an_exhausted_window_admits_nothing_before_its_reset(meters: Meters) -> None:
    meters.group("500/minute", "1000 tokens/minute")
    meters.backend.exhaust("g1", "r60", T0 + 42)
    assert (await meters.reserve()).at == pytest.approx(T0 + 42)
    meters.backend.exhaust("g1", "t60", T0 + 50)
    assert (await meters.reserve(Cost(tokens=10))).at == pytest.approx(T0 + 50, abs=0.01)


# -- token windows -------------------------------------------------------------------------


async def test_a_token_window_is_never_overrun(meters: Meters) -> None:
    meters.group("10000 tokens/minute")
    sizes = [37, 900, 5, 2500, 120, 64, 1800, 3, 777] * 12
    sent = []
    for size in sizes:
        sent.append(((await meters.reserve(Cost(tokens=size))).at, size))
    assert tokens_in_worst_window(sent, 60.0) <= 10_000
    # and it is used: a hundred-odd requests over about ten windows, not more
    assert max(at for at, _ in sent) < T0 + 60 * (sum(sizes) / 10_000 + 1.5)


async def test_settling_fewer_tokens_lets_the_next_request_go_earlier(meters: Meters) -> None:
    meters.group("1000 tokens/minute")
    first = await meters.reserve(Cost(tokens=800))
    meters.backend.settle(first, Cost(tokens=800), Cost(tokens=100))  # the answer said 100
    # The next waits for the 100 tokens' share of the minute (6 s), not the 800's (48 s).
    assert (await meters.reserve(Cost(tokens=800))).at <= T0 + 0.11 * 60


async def test_settling_more_tokens_pushes_the_next_request_back(meters: Meters) -> None:
    meters.group("1000 tokens/minute")
    first = await meters.reserve(Cost(tokens=100))
    meters.backend.settle(first, Cost(tokens=100), Cost(tokens=900))
    later = await meters.reserve(Cost(tokens=200))
    assert later.at >= T0 + 60  # 900 + 200 do not fit one window
    assert later.at <= T0 + 61  # and no later than the window allows (buckets: ≤ 1 %)


# -- daily counters ------------------------------------------------------------------------


async def test_a_day_counter_waits_for_midnight_and_restore_keeps_the_larger_count(
    meters: Meters,
) -> None:
    meters.group("5/day")
    start = meters.backend.view("g1", T0).today[0].day_start
    assert start == dt.datetime(2023, 11, 14, tzinfo=dt.UTC).timestamp()
    meters.backend.restore_day("g1", start, "requests", 3)
    meters.backend.restore_day("g1", start, "requests", 1)  # the store lags: keep 3
    await meters.reserve()
    await meters.reserve()
    answer = await meters.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)
    assert answer.refusal is Refusal.LATER  # nothing is reserved for tomorrow
    assert answer.at == MIDNIGHT
    (today,) = meters.backend.view("g1", T0).today
    assert (today.used, today.limit.count, today.resets_at) == (5, 5, MIDNIGHT)
    assert (await meters.reserve(now=MIDNIGHT)).at == MIDNIGHT
    assert meters.backend.view("g1", MIDNIGHT).today[0].used == 1


async def test_a_day_counter_resets_at_midnight_in_its_time_zone(meters: Meters) -> None:
    meters.group("1/day", tz="America/Los_Angeles")
    la_midnight = dt.datetime(2023, 11, 15, 8, tzinfo=dt.UTC).timestamp()
    await meters.reserve()
    answer = await meters.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)
    assert answer.at == la_midnight


# -- concurrency ---------------------------------------------------------------------------


async def test_concurrency_slots_are_taken_and_released(meters: Meters) -> None:
    meters.group("2 concurrent")
    first, second = await meters.reserve(), await meters.reserve()
    assert first.slot and second.slot
    answer = await meters.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)
    assert answer.refusal is Refusal.FULL
    assert meters.backend.view("g1", T0).in_flight == 2
    meters.backend.release(first)
    assert (await meters.reserve()).slot


async def test_a_request_sent_later_takes_its_slot_when_it_begins(meters: Meters) -> None:
    meters.group("60/minute", "1 concurrent")
    first = await meters.reserve()
    meters.backend.release(first)
    later = await meters.reserve()  # at T0 + 1: no slot yet
    assert later.at == pytest.approx(T0 + 1)
    assert not later.slot
    begun = await meters.backend.begin(later, now=T0 + 1)
    assert begun.reservation is not None
    assert begun.reservation.slot
    answer = await meters.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=T0 + 1)
    assert answer.refusal is Refusal.FULL


async def test_a_dead_workers_slots_expire(meters: Meters) -> None:
    if not meters.shared:
        pytest.skip("in-process slots go with their process")
    meters.group("1 concurrent")
    await meters.reserve()  # never released: its worker died
    refused = await meters.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=T0 + 1)
    assert refused.refusal is Refusal.FULL
    assert (await meters.reserve(now=T0 + 31)).slot  # after the slot's 30 s lifetime


# -- key states ----------------------------------------------------------------------------


async def test_a_cooling_key_sends_when_its_cooling_ends(meters: Meters) -> None:
    meters.group("60/minute")
    meters.backend.set_key_state(KEY, KeyState("cooling", T0 + 10))
    assert (await meters.reserve()).at == pytest.approx(T0 + 10)


async def test_key_state_rules_hold_and_every_worker_sees_them(meters: Meters) -> None:
    meters.group("60/minute")
    backend = meters.backend
    backend.set_key_state(KEY, KeyState("parked", T0 + 100, "daily quota exhausted"))
    backend.set_key_state(KEY, KeyState("cooling", T0 + 5))  # a short rest: still parked
    assert backend.key_state(KEY) == KeyState("parked", T0 + 100, "daily quota exhausted")
    answer = await backend.reserve("g1", KEY, Cost(), horizon=30, now=T0)
    assert answer.refusal is Refusal.LATER
    assert answer.at == pytest.approx(T0 + 100)
    peer = meters.other()
    await backend.refresh()  # sends what is queued
    await peer.refresh()
    assert peer.key_state(KEY) == KeyState("parked", T0 + 100, "daily quota exhausted")

    backend.set_key_state(KEY, KeyState("disabled", 0.0, "key rejected (HTTP 401)"))
    backend.set_key_state(KEY, KeyState("cooling", T0 + 500))  # disabled is final
    await backend.refresh()
    await peer.refresh()
    for worker in (backend, peer):
        assert worker.key_state(KEY).state == "disabled"
        assert worker.key_state(KEY).reason == "key rejected (HTTP 401)"
    refused = await peer.reserve("g1", KEY, Cost(), horizon=FAR, now=T0 + 1000)
    assert refused.refusal is Refusal.KEY
    assert refused.reservation is None


async def test_a_key_that_goes_bad_while_a_request_waits_refunds_it(meters: Meters) -> None:
    meters.group("60/minute", "4 concurrent")
    await meters.reserve()
    waiting = await meters.reserve()  # at T0 + 1
    meters.backend.set_key_state(KEY, KeyState("cooling", T0 + 20))
    answer = await meters.backend.begin(waiting, now=T0 + 1)
    assert answer.refusal is Refusal.KEY
    meters.backend.set_key_state(KEY, KeyState("ready"))
    assert (await meters.reserve(now=T0 + 20)).at == pytest.approx(T0 + 20)


# -- what answers teach, for every worker --------------------------------------------------


async def test_learned_and_lowered_limits_are_seen_by_every_worker(meters: Meters) -> None:
    meters.group("500/minute", "10000/day")
    backend = meters.backend
    backend.learn("g1", Limit(100, 60.0))  # announced lower than configured
    backend.learn("g1", Limit(800, 60.0))  # a higher announcement does not raise it
    backend.learn("g1", Limit(20000, 3600.0))  # announced, never configured
    expected = ["100/minute", "20000/hour", "10000/day"]
    assert [lim.describe() for lim in backend.view("g1", T0).limits] == expected
    peer = meters.other()
    await backend.refresh()
    await peer.refresh()
    view = peer.view("g1", T0)
    assert [lim.describe() for lim in view.limits] == expected
    assert [lim.describe() for lim in view.learned] == ["20000/hour"]
    # and the peer's reservations are paced by them: 100/minute has a burst of 2
    times = [(await peer.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)).at for _ in range(3)]
    assert times[2] - times[1] == pytest.approx(60.0 / 99, abs=1e-5)


async def test_workers_configured_differently_share_the_lower_limit_while_both_ask(
    meters: Meters,
) -> None:
    if not meters.shared:
        pytest.skip("each pool has its own in-process meters")
    meters.group("600/minute")
    backend = meters.backend
    other = meters.peer()  # a job configured for the same key at 120/minute
    other.attach([GroupSpec("g1", (Limit(120, 60.0),), None, (KEY,))])

    def limits(now: float) -> list[str]:
        return [lim.describe() for lim in backend.view("g1", now).limits]

    await meters.reserve()
    await other.reserve("g1", KEY, Cost(), horizon=FAR, now=T0 + 1)
    await meters.reserve(now=T0 + 2)
    assert limits(T0 + 2) == ["120/minute"]
    await meters.reserve(now=T0 + 62)  # the other job stopped asking a minute ago
    assert limits(T0 + 62) == ["600/minute"]
    backend.learn("g1", Limit(300, 60.0))  # what the provider says holds, whoever joins
    await other.reserve("g1", KEY, Cost(), horizon=FAR, now=T0 + 63)
    await other.reserve("g1", KEY, Cost(), horizon=FAR, now=T0 + 200)  # alone again
    assert [lim.describe() for lim in other.view("g1", T0 + 200).limits] == ["120/minute"]
    await meters.reserve(now=T0 + 201)
    await meters.reserve(now=T0 + 300)
    assert limits(T0 + 300) == ["300/minute"]


async def test_a_slowed_group_is_slow_for_every_worker_and_recovers(meters: Meters) -> None:
    meters.group("60/minute")
    backend = meters.backend
    backend.slow_down("g1", now=T0)
    backend.slow_down("g1", now=T0)
    assert backend.view("g1", T0).factor == pytest.approx(0.85**2)
    peer = meters.other()
    await backend.refresh()
    await peer.refresh()
    assert peer.view("g1", T0).factor == pytest.approx(0.85**2, abs=1e-5)
    await peer.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)
    second = await peer.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)
    assert second.at == pytest.approx(T0 + 1 / 0.85**2, abs=1e-4)
    backend.recover("g1", now=T0 + RECOVERY)
    await backend.refresh()
    await peer.refresh()
    assert peer.view("g1", T0 + RECOVERY).factor == 1.0


async def test_views_change_nothing(meters: Meters) -> None:
    meters.group("60/minute", "100 tokens/minute", "10/day", "2 concurrent")
    first = await meters.reserve(Cost(tokens=50))
    before = meters.backend.view("g1", T0 + 30)
    for later in (T0 + 30, T0 + 90, MIDNIGHT + 5, T0 + 30):
        meters.backend.view("g1", later)
    assert meters.backend.view("g1", T0 + 30) == before
    assert before.today[0].used == 1
    assert before.in_flight == 1
    meters.backend.release(first)


# -- Redis losing its state ----------------------------------------------------------------


async def test_meters_lost_with_redis_start_again_conservatively(
    meters: Meters, request: pytest.FixtureRequest
) -> None:
    if not meters.shared:
        pytest.skip("in-process meters are lost only with their process")
    import redis

    meters.group("600/minute", keys=(KEY, "fp-key-2"))  # a burst of 7
    before = [(await meters.reserve()).at for _ in range(9)]
    assert before[:7] == [T0] * 7
    backend = meters.backend
    backend.learn("g1", Limit(300, 60.0))
    backend.set_key_state("fp-key-2", KeyState("disabled", 0.0, "key rejected"))
    await backend.refresh()
    target = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(target.url)
    for name in client.scan_iter(match=f"{target.prefix}*"):  # as a restart would
        client.delete(name)
    client.close()

    after = [(await meters.reserve(now=T0 + 1)).at for _ in range(4)]
    # not before what this worker had reserved, plus a grace for what others had; no burst
    assert after[0] >= max(T0 + 1, before[-1]) + 1.0
    assert all(b - a >= 60 / 600 for a, b in itertools.pairwise(after))
    await backend.refresh()  # what it had learned went back with its next calls
    peer = meters.other()
    await peer.refresh()
    assert [lim.describe() for lim in peer.view("g1", T0 + 1).limits] == ["300/minute"]
    assert peer.key_state("fp-key-2").state == "disabled"


# -- fixed windows -------------------------------------------------------------------------


async def test_a_fixed_window_spends_what_is_left_at_once_then_waits_for_its_reset(
    meters: Meters,
) -> None:
    meters.group("5000/hour fixed")
    first = await meters.reserve()
    # GitHub answers: 5 left (this request counted), the window resets in 20 s.
    meters.backend.reconcile(first, "r3600", 5, T0 + 20, 1.0)
    meters.backend.release(first)
    burst = await meters.burst()
    assert len(burst) == 5  # what is left, at once
    answer = await meters.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)
    assert answer.refusal is Refusal.LATER  # nothing is reserved for the next window
    assert answer.at == pytest.approx(T0 + 0.1)  # but in flight: they may say more is left
    for left, reservation in enumerate(reversed(burst)):
        meters.backend.reconcile(reservation, "r3600", left, T0 + 20, 1.0)
    answer = await meters.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)
    assert answer.refusal is Refusal.LATER
    assert answer.at == pytest.approx(T0 + 21, abs=0.01)  # the reset, and its precision
    (window,) = meters.backend.view("g1", T0).windows
    assert (window.left, window.resets_at) == (0, pytest.approx(T0 + 21, abs=0.01))
    assert window.spent
    # At the reset, the whole window, less the five still in flight from the old one.
    assert len(await meters.burst(now=T0 + 21, most=6000)) == 4995


async def test_requests_in_flight_count_against_what_an_answer_says_is_left(
    meters: Meters,
) -> None:
    meters.group("100/hour fixed")
    r1, r2, r3 = [await meters.reserve() for _ in range(3)]
    # r2's answer: 10 left. r1 and r3 are still in flight: either may have reached the
    # provider after r2, so both count against the 10.
    meters.backend.reconcile(r2, "r3600", 10, T0 + 600, 1.0)
    meters.backend.release(r2)
    taken = await meters.burst()
    assert len(taken) == 8
    # r1 was admitted before r2 (12 left then): nothing new. r3 after it (9): one less.
    for r, left in ((r1, 12), (r3, 9)):
        meters.backend.reconcile(r, "r3600", left, T0 + 600, 1.0)
        meters.backend.release(r)
    assert len(await meters.burst()) == 1
    # Answers that say nothing of the window (a transport error): counted, to be safe.
    for reservation in taken:
        meters.backend.reconcile(reservation, "r3600", None, None)
        meters.backend.release(reservation)
    assert len(await meters.burst()) == 0


async def test_the_answer_that_says_least_is_heeded_whatever_order_they_come_in(
    meters: Meters,
) -> None:
    meters.group("100/hour fixed")
    r1, r2, r3, r4 = [await meters.reserve() for _ in range(4)]
    # r4 reached the provider before r3 (another connection): r4 says 6 left, r3 says 5.
    # Answered r4 first, the meter must not trust r4's 6 for what r3 took: r3 is still
    # in flight, so it is subtracted.
    for r, left in ((r1, 8), (r2, 7), (r4, 6)):
        meters.backend.reconcile(r, "r3600", left, T0 + 600, 1.0)
        meters.backend.release(r)
    await meters.backend.refresh()  # (Redis: what this process reads back)
    assert meters.backend.view("g1", T0).windows[0].left == 5
    meters.backend.reconcile(r3, "r3600", 5, T0 + 600, 1.0)
    meters.backend.release(r3)
    await meters.backend.refresh()
    assert meters.backend.view("g1", T0).windows[0].left == 5  # exactly what is left
    # A request of another client: fewer left than our own count says. Heeded.
    r5 = await meters.reserve()
    meters.backend.reconcile(r5, "r3600", 1, T0 + 600, 1.0)
    meters.backend.release(r5)
    assert len(await meters.burst()) == 1


async def test_an_answer_from_the_window_before_is_ignored(meters: Meters) -> None:
    meters.group("100/minute fixed")
    old = await meters.reserve()
    meters.backend.reconcile(old, "r60", 0, T0 + 10, 0.0)  # spent until T0 + 10
    later = await meters.reserve(now=T0 + 10.5)  # a new window
    meters.backend.reconcile(later, "r60", 98, T0 + 70, 0.0)
    meters.backend.release(later)
    meters.backend.reconcile(old, "r60", 0, T0 + 10, 0.0)  # late and about the old one
    meters.backend.release(old)
    assert len(await meters.burst(now=T0 + 11)) == 98


async def test_a_fixed_window_nobody_announced_runs_from_its_first_request(
    meters: Meters,
) -> None:
    meters.group("3/minute fixed")
    for reservation in await meters.burst():  # answered without a word about the window
        meters.backend.reconcile(reservation, "r60", None, None)
        meters.backend.release(reservation)
    answer = await meters.backend.reserve("g1", KEY, Cost(), horizon=FAR, now=T0 + 30)
    assert answer.refusal is Refusal.LATER
    assert answer.at == pytest.approx(T0 + 60, abs=0.01)


async def test_a_window_configured_without_saying_becomes_fixed_when_the_provider_says_so(
    meters: Meters,
) -> None:
    meters.group("100/hour")
    meters.backend.learn("g1", Limit(100, 3600.0, fixed=True))
    (limit,) = meters.backend.view("g1", T0).limits
    assert (limit.count, limit.fixed) == (100, True)
    first = await meters.reserve()
    meters.backend.reconcile(first, "r3600", 2, T0 + 300, 1.0)
    meters.backend.release(first)
    assert len(await meters.burst()) == 2


async def test_every_worker_sees_what_is_left_of_a_fixed_window(meters: Meters) -> None:
    meters.group("100/hour fixed")
    first = await meters.reserve()
    meters.backend.reconcile(first, "r3600", 1, T0 + 300, 1.0)
    meters.backend.release(first)
    peer = meters.other()
    await meters.backend.refresh()
    await peer.refresh()
    (window,) = peer.view("g1", T0).windows
    assert (window.left, window.resets_at) == (1, pytest.approx(T0 + 301, abs=0.01))
    assert (await peer.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)).reservation
    refused = await peer.reserve("g1", KEY, Cost(), horizon=FAR, now=T0)
    assert refused.refusal is Refusal.LATER


# -- learned windows, tokens in and out ----------------------------------------------------


async def test_a_window_learned_mid_run_starts_with_what_was_spent(meters: Meters) -> None:
    meters.group()
    meters.backend.learn("g1", Limit(600, 60.0), used=70)  # a burst of 7 before it was known
    interval = 60.0 / (600 - default_burst(Limit(600, 60.0)) + 1)
    first = await meters.reserve()
    assert first.at == pytest.approx(T0 + (70 - 7 + 1) * interval, abs=1e-3)


async def test_input_and_output_tokens_are_metered_apart(meters: Meters) -> None:
    meters.group("1000 input tokens/minute", "100 output tokens/minute")
    long_prompt = Cost(input_tokens=800, output_tokens=10)
    first = await meters.reserve(long_prompt)
    assert first.at == T0
    # Its 10 output tokens would hold the next back 6 s; its 800 input tokens, 48 s: the
    # input meter paces the next, as a bucket refilled at 1,000 a minute would.
    later = await meters.backend.reserve(
        "g1", KEY, Cost(input_tokens=100, output_tokens=10), horizon=1.0, now=T0
    )
    assert later.refusal is Refusal.LATER
    assert later.at == pytest.approx(T0 + 0.8 * 60, rel=0.02)
    # The answer said the first used 100 input tokens: the next goes after their share.
    meters.backend.settle(first, long_prompt, Cost(tokens=105, input_tokens=100, output_tokens=5))
    assert (await meters.reserve(Cost(input_tokens=100, output_tokens=5))).at <= T0 + 7


# -- concurrency learned -------------------------------------------------------------------


async def test_a_concurrency_limit_answered_caps_requests_in_flight_then_recovers(
    meters: Meters,
) -> None:
    meters.group()
    backend = meters.backend
    backend.throttle("g1", 11, now=T0)  # 11 were in flight when the provider said no
    (limit,) = backend.view("g1", T0).limits
    assert limit.describe() == "7 concurrent"  # cut below the 10 that went through
    taken = await meters.burst()
    assert len(taken) == 7
    backend.release(taken[0])
    assert len(await meters.burst()) == 1
    backend.throttle("g1", 12, now=T0 + 0.5)  # the same burst answered again: no new cut
    assert backend.view("g1", T0 + 0.5).limits[0].count == 7
    backend.recover("g1", now=T0 + CAP_RECOVERY)  # back to just below what tripped it
    await backend.refresh()
    assert backend.view("g1", T0 + CAP_RECOVERY).limits[0].count == 10
    backend.recover("g1", now=T0 + RECOVERY + 1)  # and forgotten after a while
    await backend.refresh()
    assert backend.view("g1", T0 + RECOVERY + 1).limits == ()


async def test_tripping_a_learned_concurrency_level_again_lowers_it(meters: Meters) -> None:
    meters.group("20 concurrent")
    backend = meters.backend
    backend.throttle("g1", 13, now=T0)
    backend.recover("g1", now=T0 + CAP_RECOVERY)
    await backend.refresh()
    assert backend.view("g1", T0 + CAP_RECOVERY).limits[0].count == 12
    backend.throttle("g1", 13, now=T0 + CAP_RECOVERY + 1)  # 12 were still too many
    backend.recover("g1", now=T0 + 2 * CAP_RECOVERY + 2)
    await backend.refresh()
    assert backend.view("g1", T0 + 2 * CAP_RECOVERY + 2).limits[0].count == 11
