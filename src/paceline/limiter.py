"""The limiter: which key may send which request, and when.

Every request *reserves* its cost on a key before it is sent: the limiter looks at each
usable key, asks its meters when the cost would fit, takes the key that can admit it
soonest, reserves there (so the next request sees the slot as taken) and sleeps until the
slot's time. The answer then *settles* the reservation: actual tokens replace the
estimate, a 429 cools that key alone and slows its meters a little, a spent daily quota
parks the key until its reset, a rejected key is disabled, and limits the provider
announces but nobody configured are learned.

Keys that share one upstream quota form a group with one set of meters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .errors import PacelineError
from .feedback import Feedback, Verdict, Window
from .limits import ConcurrencyMeter, Cost, DayMeter, GcraMeter, Limit, WindowMeter

if TYPE_CHECKING:
    from .keys import Key

__all__ = ["Group", "Lease", "Limiter", "QuotaWait", "Stopping"]

#: A reservation further ahead than this is not taken: the limiter waits and looks again,
#: so a key that comes back (or a stop) is noticed.
HORIZON = 30.0
#: How much a 429 that the meters did not foresee slows that key's meters, and the floor.
SLOWDOWN, MIN_FACTOR = 0.85, 0.2
#: Seconds for a slowed-down key to recover its configured rate in full.
RECOVERY = 600.0


class Stopping(PacelineError):
    """The run is stopping: a request that has not been sent gives up its slot."""


class QuotaWait(PacelineError):
    """Every usable key is out of quota until ``until`` (raised when asked to stop then)."""

    def __init__(self, until: float) -> None:
        super().__init__("every key is out of quota")
        self.until = until


class Group:
    """Keys sharing one set of meters (one key alone, or keys of one upstream account)."""

    __slots__ = ("concurrency", "day", "gcra", "learned", "slowed_at", "tz")

    def __init__(self, limits: Sequence[Limit], tz: dt.tzinfo) -> None:
        self.tz = tz
        # Request limits pace as GCRA; token limits, where one request can be a large
        # share of the window, as a log of reservations.
        self.gcra: list[GcraMeter | WindowMeter] = [
            _window_meter(lim) for lim in limits if lim.unit != "concurrent" and not lim.daily
        ]
        self.day: list[DayMeter] = [DayMeter(lim, tz) for lim in limits if lim.daily]
        conc = [lim for lim in limits if lim.unit == "concurrent"]
        self.concurrency = ConcurrencyMeter(min(conc, key=lambda x: x.count)) if conc else None
        self.learned: list[Limit] = []
        self.slowed_at = 0.0

    def meters(self) -> list[GcraMeter | WindowMeter | DayMeter]:
        return [*self.gcra, *self.day]

    @property
    def limited(self) -> bool:
        return bool(self.gcra or self.day or self.concurrency)


def _window_meter(limit: Limit) -> GcraMeter | WindowMeter:
    return WindowMeter(limit) if limit.unit == "tokens" else GcraMeter(limit)


def _units(meter: GcraMeter | WindowMeter | DayMeter, cost: Cost) -> float:
    return float(cost.tokens if meter.limit.unit == "tokens" else cost.requests)


def _full(group: Group) -> bool:
    return group.concurrency is not None and group.concurrency.full


@dataclass(slots=True)
class Lease:
    """A key and a slot for one request; settle it with the answer, then release it."""

    key: Key
    cost: Cost
    sent_at: float
    released: bool = False
    # the token reservations this request holds, settled (or refunded) one by one
    held: list[tuple[WindowMeter, list[float]]] = field(default_factory=list)


class Limiter:
    """Hands out keys and slots for a pool's keys."""

    def __init__(
        self, keys: Sequence[Key], clock: Clock, on_event: Callable[[str], None] | None = None
    ) -> None:
        self.keys = list(keys)
        self.clock = clock
        self.on_event = on_event or (lambda message: None)
        self.stop_when_out_of_quota = False
        self.waiting = 0  # acquirers sleeping for a slot now
        self.waited = 0  # acquirers that had to wait, ever
        self.rejections = 0  # 429s, ever (the engine's autoscaler watches it)
        self._told: set[str] = set()
        self._closed = asyncio.Event()
        self._next = 0
        # FIFO of requests waiting for a concurrency slot on any key
        self._waiters: deque[asyncio.Future[None]] = deque()

    # -- acquiring ---------------------------------------------------------------------

    def reopen(self) -> None:
        """Ready for a new run (after :meth:`close`)."""
        self._closed = asyncio.Event()
        self.waiting = 0

    def close(self) -> None:
        """Wake every waiting acquirer with :class:`Stopping`."""
        self._closed.set()

    async def _sleep(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait([sleeper, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closed.cancel()
        if self._closed.is_set():
            raise Stopping("stopping")

    def _ready_at(self, key: Key, cost: Cost, now: float) -> float:
        at = max(now, key.until) if key.state in ("cooling", "parked") else now
        for meter in key.group.meters():
            at = max(at, meter.ready_at(_units(meter, cost), now))
        return at

    def _best(self, cost: Cost, now: float) -> tuple[Key | None, float]:
        """The key that admits ``cost`` soonest, preferring keys with a free in-flight slot."""
        best, best_rank = None, (True, math.inf)
        n = len(self.keys)
        for i in range(n):
            key = self.keys[(self._next + i) % n]
            if key.state == "disabled":
                continue
            rank = (_full(key.group), self._ready_at(key, cost, now))
            if rank < best_rank:
                best, best_rank = key, rank
        return best, best_rank[1]

    async def acquire(self, cost: Cost) -> Lease:
        """Wait for the key that can send ``cost`` soonest, and its slot."""
        from .keys import NoUsableKey

        waited = False
        try:
            while True:
                if self._closed.is_set():
                    raise Stopping("stopping")
                now = self.clock.time()
                key, at = self._best(cost, now)
                if key is None:
                    reasons = "; ".join(f"{k.masked}: {k.reason}" for k in self.keys if k.reason)
                    raise NoUsableKey(f"no usable key left ({reasons or 'all disabled'})")
                if _full(key.group):  # every usable key has all its requests in flight
                    waited = self._begin_wait(waited)
                    await self._wait_turn()
                    continue
                day_later = any(m.ready_at(_units(m, cost), now) > now for m in key.group.day)
                if at - now > HORIZON or (day_later and at > now):
                    # Far ahead, or in a day not begun: look again then, reserving nothing
                    # (a request counted today but sent tomorrow would escape both counts).
                    if self.stop_when_out_of_quota and self._all_out_of_quota(now):
                        raise QuotaWait(at)
                    waited = self._begin_wait(waited)
                    await self._sleep(min(at - now, HORIZON))
                    continue
                # Reserve at the time the request is sent (a cooling key sends later than
                # its meters would allow), so requests held back do not go as a burst.
                held: list[tuple[WindowMeter, list[float]]] = []
                for gcra in key.group.gcra:
                    gcra.reserve(_units(gcra, cost), at)
                    if isinstance(gcra, WindowMeter) and gcra.last_entry is not None:
                        held.append((gcra, gcra.last_entry))
                for day in key.group.day:
                    day.reserve(_units(day, cost), now)
                self._next = (self.keys.index(key) + 1) % len(self.keys)
                if at > now:
                    waited = self._begin_wait(waited)
                    try:
                        await self._sleep(at - now)
                    except (Stopping, asyncio.CancelledError):
                        self._refund(key, cost, held)
                        raise
                    if key.state == "disabled" or key.until > self.clock.time():
                        self._refund(key, cost, held)  # the key went bad while we waited
                        continue
                group = key.group
                if group.concurrency is not None:
                    if group.concurrency.full:  # taken while we slept: choose again
                        self._refund(key, cost, held)
                        continue
                    group.concurrency.in_flight += 1
                key.requests += cost.requests
                key.tokens += cost.tokens
                return Lease(key, cost, self.clock.time(), held=held)
        finally:
            if waited:
                self.waiting -= 1

    async def _wait_turn(self) -> None:
        """Wait until some key's in-flight slot is released."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [turn, closed]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if turn.done():
                self._wake_one()  # woken but gone: the next waiter gets the slot
            raise
        finally:
            closed.cancel()
            if not turn.done():
                turn.cancel()
        if self._closed.is_set():
            raise Stopping("stopping")

    def _wake_one(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                break

    def _begin_wait(self, waited: bool) -> bool:
        if not waited:
            self.waiting += 1
            self.waited += 1
        return True

    def _refund(
        self, key: Key, cost: Cost, held: Sequence[tuple[WindowMeter, list[float]]] = ()
    ) -> None:
        entries = {id(meter): entry for meter, entry in held}
        for meter in key.group.meters():
            if isinstance(meter, WindowMeter):
                entry = entries.get(id(meter))
                if entry is not None:
                    meter.adjust_entry(entry, -_units(meter, cost))
                continue
            meter.adjust(-_units(meter, cost))

    def _all_out_of_quota(self, now: float) -> bool:
        usable = [k for k in self.keys if k.state != "disabled"]
        return bool(usable) and all(
            (k.state == "parked" and k.until > now + HORIZON)
            or any(m.ready_at(1, now) > now + HORIZON for m in k.group.day)
            for k in usable
        )

    def quota_wait(self, now: float) -> float | None:
        """When every usable key is out of quota: the earliest time one comes back."""
        if not self._all_out_of_quota(now):
            return None
        usable = [k for k in self.keys if k.state != "disabled"]
        return min(self._ready_at(k, Cost(), now) for k in usable)

    def release(self, lease: Lease) -> None:
        """The request is over: free its concurrency slot."""
        if lease.released:
            return
        lease.released = True
        group = lease.key.group
        if group.concurrency is not None:
            group.concurrency.in_flight -= 1
            self._wake_one()

    # -- learning ----------------------------------------------------------------------

    def settle(self, lease: Lease, feedback: Feedback) -> None:
        """Learn from the answer to a leased request."""
        key, now = lease.key, self.clock.time()
        group = key.group
        if feedback.tokens_used is not None and lease.cost.tokens != feedback.tokens_used:
            delta = feedback.tokens_used - lease.cost.tokens
            key.tokens += delta
            entries = {id(meter): entry for meter, entry in lease.held}
            for meter in group.meters():
                if meter.limit.unit != "tokens":
                    continue
                if isinstance(meter, WindowMeter):
                    entry = entries.get(id(meter))
                    if entry is not None:
                        meter.adjust_entry(entry, delta)
                else:
                    meter.adjust(delta)
        verdict = feedback.verdict
        if verdict is Verdict.OK:
            key.consecutive_429 = 0
            if key.state == "cooling" and key.until <= now:
                key.state = "ready"
            self._recover(group, now)
        elif verdict is Verdict.RATE_LIMITED:
            self.rejections += 1
            key.rate_limited += 1
            key.consecutive_429 += 1
            self._refund(key, lease.cost, lease.held)  # a refused request spends nothing
            # Without advice, wait a little longer after each 429 in a row.
            wait = 1.0 * 2 ** min(key.consecutive_429 - 1, 6)
            until = feedback.retry_at if feedback.retry_at is not None else now + wait
            self._cool(key, until, "cooling")
            self._slow_down(group, now)
        elif verdict is Verdict.QUOTA_EXHAUSTED:
            key.rate_limited += 1
            self._refund(key, lease.cost, lease.held)
            until = feedback.retry_at if feedback.retry_at is not None else math.inf
            if feedback.scope in (None, "day"):  # an hour's quota leaves the day's alone
                for meter in group.day:
                    meter.exhaust_until(until)
            already = key.state in ("parked", "disabled") and key.until >= until
            self._cool(key, until, "parked")
            key.reason = feedback.reason or "quota exhausted"
            if not already:  # once, not once per request that was in flight
                self.on_event(f"key {key.masked} parked: {key.reason}")
        elif verdict is Verdict.KEY_INVALID:
            key.errors += 1
            if key.state != "disabled":  # several answers may say so at once: tell once
                key.state = "disabled"
                key.reason = feedback.reason or "rejected by the provider"
                self.on_event(f"key {key.masked} disabled for this run: {key.reason}")
        self._learn(key, feedback.windows, now)

    def _cool(self, key: Key, until: float, state: str) -> None:
        if key.state == "disabled":
            return
        if key.state == "parked" and state == "cooling" and key.until >= until:
            return  # a short rest does not end a longer park
        key.until = max(key.until, until) if key.state == state else until
        key.state = state

    def _slow_down(self, group: Group, now: float) -> None:
        for meter in group.gcra:
            if meter.limit.unit == "requests":
                meter.factor = max(MIN_FACTOR, meter.factor * SLOWDOWN)
        group.slowed_at = now

    def _recover(self, group: Group, now: float) -> None:
        gained = (now - group.slowed_at) / RECOVERY
        slowed = [meter for meter in group.gcra if meter.factor < 1.0]
        for meter in slowed:  # every slowed meter, each by the whole time since
            meter.factor = min(1.0, meter.factor + gained * (1 - MIN_FACTOR))
        if slowed:
            group.slowed_at = now

    def _learn(self, key: Key, windows: Sequence[Window], now: float) -> None:
        group = key.group
        for window in windows:
            if window.name in ("input_tokens", "output_tokens"):
                continue  # Anthropic's split windows: not the one tokens limit we meter
            meters = [m for m in group.meters() if m.limit.unit == window.unit]
            matching = [m for m in meters if _same_window(m.limit, window)]
            if window.limit and window.period and not matching:
                limit = Limit(window.limit, window.period, window.unit)
                if limit.daily:
                    group.day.append(DayMeter(limit, group.tz))
                else:
                    group.gcra.append(_window_meter(limit))
                group.learned.append(limit)
                if limit.describe() not in self._told:  # once per limit, not once per key
                    self._told.add(limit.describe())
                    self.on_event(f"key {key.masked}: learned limit {limit.describe()}")
            for meter in matching:
                if window.limit and window.limit < meter.limit.count:
                    # Configured higher than the provider allows: believe the provider.
                    lowered = Limit(window.limit, meter.limit.seconds, meter.limit.unit)
                    if isinstance(meter, (GcraMeter, WindowMeter)):
                        meter.set_limit(lowered)
                    else:
                        meter.limit = lowered
                    self.on_event(f"key {key.masked}: limit lowered to {meter.limit.describe()}")
            if window.remaining == 0 and window.reset_at is not None and window.reset_at > now:
                if matching:
                    for meter in matching:
                        meter.exhaust_until(window.reset_at)
                else:
                    self._cool(key, window.reset_at, "cooling")


def _same_window(limit: Limit, window: Window) -> bool:
    if window.period is None:  # which window is it? Only the one with that very count.
        return window.limit is not None and window.limit == limit.count
    return abs(limit.seconds - window.period) <= 0.1 * max(limit.seconds, window.period)
