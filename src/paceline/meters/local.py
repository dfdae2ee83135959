"""The local meter backend: every meter in this process, for one process's run.

The default for every job. Per key group:

* request windows shorter than a day: GCRA (the generic cell rate algorithm). One number per
  meter, the *theoretical arrival time*; a request reserves its cost by pushing it forward,
  so concurrent requests get distinct send times and a burst can never exceed the limit.
  The burst is small (:func:`~paceline.limits.default_burst`) and requests are spaced so
  that no window of the limit's length ever holds more than the limit: with a burst of *b*,
  the emission interval is ``window / (limit - b + 1)``;
* token windows: a log of reservations, exact (one request may be a large share of the
  window, where GCRA would either overrun or waste);
* fixed request windows (a provider that announces what is left and when it resets, as
  GitHub does): what was left when an answered request was admitted, less what was taken
  since and what is still in flight from before it (:class:`FixedMeter`); spent, it
  admits nothing before the reset, then the whole window again;
* daily (and longer) windows: a counter that resets at midnight in a time zone (Gemini's
  per-day quotas reset at midnight Pacific), because a daily quota is spent as fast as the
  shorter limits allow, not spread evenly over the day;
* requests in flight, capped by ``N concurrent`` and by what a concurrency limit answered
  taught (:class:`ConcurrencyMeter`).

Key states live here too. Everything is synchronous; the ``async`` calls of
:class:`~paceline.meters.protocol.MeterBackend` never wait.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence

from paceline.clock import SYSTEM_CLOCK, Clock
from paceline.limits import Cost, Limit, day_start, default_burst, next_day_start, zone

from .protocol import (
    CAP_CUT,
    CAP_RECOVERY,
    MIN_FACTOR,
    RECOVERY,
    SLOWDOWN,
    THROTTLE_HOLD,
    Answer,
    DayUsage,
    GroupSpec,
    GroupView,
    KeyState,
    Refusal,
    Reservation,
    WindowUsage,
    meter_id,
    reset_edge,
)

__all__ = [
    "ConcurrencyMeter",
    "DayMeter",
    "FixedMeter",
    "Flight",
    "GcraMeter",
    "LocalBackend",
    "LocalGroup",
    "WindowMeter",
]


class GcraMeter:
    """A sliding limit as GCRA: reserve now, send at the returned time.

    ``factor`` (≤ 1) slows the meter down when the provider answers 429 although the meter
    allowed the request (its real limit is lower than configured, or shared).
    """

    __slots__ = ("burst", "factor", "limit", "tat")

    def __init__(self, limit: Limit, burst: int | None = None) -> None:
        self.limit = limit
        default = default_burst(limit)
        self.burst = max(1, min(limit.count, default if burst is None else burst))
        self.tat = 0.0  # theoretical arrival time: when the meter is "empty" again
        self.factor = 1.0

    def set_limit(self, limit: Limit) -> None:
        """Replace the limit (learned from the provider), keeping what is reserved."""
        self.limit = limit
        self.burst = max(1, min(self.burst, default_burst(limit)))

    @property
    def interval(self) -> float:
        """Seconds of the window one unit uses up."""
        return self.limit.seconds / (self.limit.count - self.burst + 1) / self.factor

    def _capacity(self, cost: float) -> float:
        # A single request bigger than the burst (many tokens) may go when the meter is
        # empty; it then waits out its own cost before the next one.
        return max(self.burst, cost) * self.interval

    def ready_at(self, cost: float, now: float) -> float:
        """Earliest time a request of ``cost`` units fits."""
        if cost <= 0:
            return now
        return max(now, self.tat + cost * self.interval - self._capacity(cost))

    def reserve(self, cost: float, now: float) -> float:
        """Take ``cost`` units; returns when the request may be sent."""
        at = self.ready_at(cost, now)
        if cost > 0:
            self.tat = max(self.tat, at) + cost * self.interval
        return at

    def adjust(self, units: float) -> None:
        """Settle: the request used ``units`` more (or, negative, fewer) than reserved."""
        self.tat += units * self.interval

    def used(self, now: float) -> float:
        """Units counted in the current window (for display)."""
        return max(0.0, self.tat - now) / self.interval if self.interval > 0 else 0.0

    def exhaust_until(self, until: float) -> None:
        """The provider says nothing is left before ``until``."""
        self.tat = max(self.tat, until + self._capacity(1) - self.interval)

    def seed(self, used: float, now: float) -> None:
        """A new meter for a window already ``used`` this much: pace as if it had been
        spent at the meter's rate up to now (no burst on top of one already sent)."""
        self.tat = max(self.tat, now + used * self.interval)


#: How soon a fixed window held back by requests in flight is looked at again.
LAND_POLL = 0.1
#: Past a window's edge by this much, so a provider counting its window closed on both
#: ends does not see the old request and the new one together.
_EDGE = 0.001


class WindowMeter:
    """A sliding window kept as a log of reservations: for token limits.

    One request may carry thousands of tokens, a large share of the limit; GCRA would then
    either let a window hold the limit plus one request, or space requests by the largest
    one. The log admits a request when the tokens reserved in the window ending at its send
    time, plus its own, fit the limit: never more, and no slack lost.

    A smooth window (not announced fixed) is paced as GCRA too (``pace``): the log alone
    lets a whole window's tokens go at once and then stalls, where a provider's bucket
    (Anthropic's, OpenAI's enforced over spans shorter than the minute) refills as it
    goes. A fixed one is the log alone, exhausted by the reset it announces.
    """

    __slots__ = ("entries", "factor", "last_entry", "limit", "not_before", "pace", "total")

    def __init__(self, limit: Limit) -> None:
        self.pace = None if limit.fixed else GcraMeter(limit)
        self.limit = limit
        self.entries: deque[list[float]] = deque()  # [send time, units], in time order
        self.total = 0.0  # units in ``entries``
        self.last_entry: list[float] | None = None  # the latest reservation, for its lease
        self.factor = 1.0  # as GcraMeter's; token windows are not slowed down
        self.not_before = -math.inf  # the provider said nothing is left before then

    def set_limit(self, limit: Limit) -> None:
        self.limit = limit
        if self.pace is not None:
            self.pace.set_limit(limit)

    def _forget(self, now: float) -> None:
        horizon = now - self.limit.seconds
        entries = self.entries
        while entries and entries[0][0] <= horizon:
            self.total -= entries.popleft()[1]

    def ready_at(self, cost: float, now: float) -> float:
        """Earliest time (not before the last reservation) ``cost`` fits the window."""
        self._forget(now)
        entries, window = self.entries, self.limit.seconds
        at = max(now, entries[-1][0], self.not_before) if entries else max(now, self.not_before)
        total = self.total
        i = 0
        while i < len(entries) and entries[i][0] <= at - window:
            total -= entries[i][1]
            i += 1
        # Slide the window's end forward past the oldest reservations until the cost fits
        # (a request larger than the whole limit goes alone into an empty window).
        while total + cost > self.limit.count and i < len(entries):
            at = max(at, entries[i][0] + window + _EDGE)
            total -= entries[i][1]
            i += 1
        if self.pace is not None:
            at = max(at, self.pace.ready_at(cost, now))
        return at

    def reserve(self, cost: float, now: float) -> float:
        at = self.ready_at(cost, now)
        self.last_entry = None
        if cost > 0:
            self.last_entry = [at, cost]
            self.entries.append(self.last_entry)
            self.total += cost
            if self.pace is not None:
                self.pace.reserve(cost, at)
        return at

    def adjust_entry(self, entry: list[float], units: float) -> None:
        """Settle one reservation (its lease's), not whichever came last."""
        change = max(-entry[1], units)
        entry[1] += change
        self.total += change
        if self.pace is not None:
            self.pace.adjust(change)

    def adjust(self, units: float) -> None:
        """Settle the latest reservations up (more used) or down (fewer, or refused)."""
        if self.pace is not None:
            self.pace.adjust(units)
        entries = self.entries
        if units >= 0:
            if entries:
                entries[-1][1] += units
                self.total += units
            return
        for entry in reversed(entries):
            take = min(entry[1], -units)
            entry[1] -= take
            self.total -= take
            units += take
            if units >= 0:
                break

    def used(self, now: float) -> float:
        """Units sent in the window ending ``now`` (for display: changes nothing)."""
        start = now - self.limit.seconds
        return sum(units for at, units in self.entries if start < at <= now)

    def exhaust_until(self, until: float) -> None:
        """Nothing fits before ``until``."""
        self.not_before = max(self.not_before, until)
        if self.pace is not None:  # then the pace goes on from there
            self.pace.tat = max(self.pace.tat, until)

    def seed(self, used: float, now: float) -> None:
        """A new meter for a window already ``used`` this much (counted as of now)."""
        if used > 0:
            self.entries.append([now, used])
            self.total += used
            if self.pace is not None:
                self.pace.seed(used, now)


class DayMeter:
    """Units per calendar day (or N days) in a time zone, as a counter."""

    __slots__ = ("limit", "reset_at", "tz", "used_units", "window_start")

    def __init__(self, limit: Limit, tz: dt.tzinfo) -> None:
        self.limit = limit
        self.tz = tz
        self.used_units = 0.0
        self.window_start = -math.inf
        self.reset_at = -math.inf

    def _end(self, start: float) -> float:
        end = start
        for _ in range(max(1, round(self.limit.seconds / 86400))):
            end = next_day_start(end, self.tz)
        return end

    def _roll(self, now: float) -> None:
        if now >= self.reset_at:
            self.window_start = day_start(now, self.tz)
            self.reset_at = self._end(self.window_start)
            self.used_units = 0.0

    def ready_at(self, cost: float, now: float) -> float:
        self._roll(now)
        if self.used_units + cost <= self.limit.count or self.used_units == 0:
            return now
        return self.reset_at

    def reserve(self, cost: float, now: float) -> float:
        at = self.ready_at(cost, now)
        if at <= now:
            self.used_units += cost
        return at

    def adjust(self, units: float) -> None:
        self.used_units = max(0.0, self.used_units + units)

    def used(self, now: float) -> float:
        """Units counted today; rolls the window to ``now``'s day first (for display,
        :meth:`window` changes nothing)."""
        self._roll(now)
        return self.used_units

    def window(self, now: float) -> tuple[float, float, float]:
        """``(start, reset, used)`` of the window holding ``now``, changing nothing."""
        if now < self.reset_at:
            return self.window_start, self.reset_at, self.used_units
        start = day_start(now, self.tz)
        return start, self._end(start), 0.0

    def exhaust_until(self, until: float) -> None:
        self.used_units = float(self.limit.count)
        self.reset_at = max(self.reset_at, until)

    def restore(self, used: float, now: float) -> None:
        """Start from what the store says was spent today (keeping the larger count)."""
        self._roll(now)
        self.used_units = max(self.used_units, used)

    def restore_day(self, start: float, used: float) -> None:
        """As :meth:`restore`, for the window starting ``start``; an older one is ignored."""
        if start > self.window_start and start >= self.reset_at:
            self._roll(start)
        if start == self.window_start:
            self.used_units = max(self.used_units, used)


class Flight:
    """A group's requests in flight (taken, not yet released), for its fixed windows."""

    __slots__ = ("count", "flying", "n")

    def __init__(self) -> None:
        self.n = 0
        self.count = 0
        self.flying: dict[int, int] = {}  # token -> requests

    def take(self, requests: int) -> int:
        self.n += 1
        units = max(1, requests)
        self.flying[self.n] = units
        self.count += units
        return self.n

    def land(self, token: int) -> None:
        self.count -= self.flying.pop(token, 0)


class FixedMeter:
    """A fixed request window: what is left until the announced reset.

    The provider's answers say what was left (``remaining``) when a request was admitted,
    and when the window resets. Of the answers in this window, the one that says least
    came from the request admitted last; every other request answered was admitted before
    it and is in its count. So what is left now is the least any answer said, less the
    requests still in flight (they may have been admitted after it), whatever order
    requests reached the provider and answers came back. Spent, it admits nothing before
    the reset (and the reset's precision: a reset given in whole seconds may lie up to a
    second later); then the whole window again, less the requests still in flight, until
    an answer says better. Before any answer the window is taken as full, from its first
    request.
    """

    __slots__ = ("announced", "end", "factor", "flight", "left", "limit", "slack")

    def __init__(self, limit: Limit, flight: Flight) -> None:
        self.limit = limit
        self.flight = flight
        self.end = -math.inf  # when the window resets; -inf: not known yet
        self.announced = False  # ``end`` was said by the provider (not assumed)
        self.slack = 0.0
        self.left = float(limit.count)  # the least an answer said was left
        self.factor = 1.0  # as GcraMeter's; what is left is not slowed down

    def set_limit(self, limit: Limit) -> None:
        if limit.count < self.limit.count and not self.announced:
            self.left = min(self.left, float(limit.count))
        self.limit = limit

    @property
    def reset(self) -> float:
        """When the window may be used again (``inf`` while its end is not known)."""
        return self.end + reset_edge(self.slack) if math.isfinite(self.end) else math.inf

    def _roll(self, now: float) -> None:
        if now >= self.reset:  # a new window: all of it, less what is still in flight
            self.end, self.announced, self.slack = -math.inf, False, 0.0
            self.left = float(self.limit.count)

    def available(self, now: float) -> float:
        """What may still be sent in this window (changes nothing once rolled)."""
        left = self.limit.count if now >= self.reset else self.left
        return left - self.flight.count

    def ready_at(self, cost: float, now: float) -> float:
        if cost <= 0:
            return now
        self._roll(now)
        if self.available(now) >= cost:
            return now
        if self.left >= cost or not math.isfinite(self.reset):
            # Held back by requests in flight (or spent before the window's end is
            # known): look again soon, as they land.
            return now + LAND_POLL
        return self.reset

    def reserve(self, cost: float, now: float) -> float:
        """The request is counted in flight by the group's :class:`Flight`; the window
        opens (as far as is known) with its first request."""
        self._roll(now)
        if cost > 0 and not math.isfinite(self.end):
            self.end = now + self.limit.seconds
        return now

    def adjust(self, units: float) -> None:
        """Refunds are not given back (the request may still be counted by the provider);
        the next answer says what is left."""

    def reconcile(
        self, remaining: int | None, reset_at: float | None, slack: float, now: float
    ) -> None:
        """An answer says ``remaining`` were left when its request was admitted, and that
        the window resets at ``reset_at`` (``remaining`` of ``None``: it said nothing, and
        its request counts)."""
        if remaining is None:
            if now < self.reset or not math.isfinite(self.reset):
                self.left -= 1
            return
        if reset_at is not None:
            if reset_at + reset_edge(slack) <= now:
                return  # about a window that is over
            tolerance = max(slack, min(1.5, self.limit.seconds / 4))
            if self.announced and reset_at < self.end - tolerance:
                return  # an answer from the window before
            if not self.announced or reset_at > self.end + tolerance:
                self.end, self.slack, self.announced = reset_at, slack, True
                self.left = float(remaining)
                return
        self.left = min(self.left, float(remaining))

    def exhaust_until(self, until: float) -> None:
        self.left = 0.0
        if math.isfinite(until):
            self.end, self.announced = max(self.end, until), True

    def used(self, now: float) -> float:
        return max(0.0, self.limit.count - self.available(now))

    def usage(self, now: float) -> WindowUsage:
        reset = self.reset if now < self.reset else -math.inf
        shown = reset if math.isfinite(reset) else -math.inf
        return WindowUsage(self.limit, max(0.0, self.available(now)), shown)


class ConcurrencyMeter:
    """Requests in flight, at most the configured ``N concurrent`` and at most what a
    concurrency limit answered taught (:meth:`throttle`): the cap drops below the level
    that tripped it and climbs back to just under that level over
    :data:`~paceline.meters.protocol.CAP_RECOVERY` seconds (tripped again, the level
    drops by a tenth); the learned level is forgotten after
    :data:`~paceline.meters.protocol.RECOVERY` seconds without another trip."""

    __slots__ = ("base", "ceiling", "cut", "in_flight", "limit", "throttled_at")

    def __init__(self, limit: Limit | None) -> None:
        self.base = limit  # as configured (None: no cap)
        self.limit = limit  # in force now
        self.in_flight = 0
        self.ceiling: int | None = None  # learned from the provider
        self.cut = 0
        self.throttled_at = -math.inf

    @property
    def full(self) -> bool:
        return self.limit is not None and self.in_flight >= self.limit.count

    @property
    def learned(self) -> bool:
        return self.ceiling is not None

    def throttle(self, in_flight: int, now: float) -> None:
        level = max(1, in_flight - 1)
        if self.ceiling is not None and now - self.throttled_at < THROTTLE_HOLD:
            self.ceiling = min(self.ceiling, level)  # the same burst answered: no new cut
            self.cut = min(self.cut, self.ceiling)
        else:
            # Tripped again below a level learned before: that level was too high.
            if self.ceiling is not None:
                level = min(level, max(1, self.ceiling - max(1, self.ceiling // 10)))
            self.ceiling = level
            self.cut = max(1, math.floor(CAP_CUT * level))
            self.throttled_at = now
        self.refresh(now)

    def refresh(self, now: float) -> None:
        """The cap in force at ``now``."""
        if self.ceiling is None:
            return
        elapsed = now - self.throttled_at
        if elapsed >= RECOVERY:
            self.ceiling, self.limit = None, self.base
            return
        share = min(1.0, max(0.0, elapsed / CAP_RECOVERY))
        cap = math.floor(self.cut + (self.ceiling - self.cut) * share)
        if self.base is not None:
            cap = min(cap, self.base.count)
        self.limit = Limit(max(1, cap), 0.0, "concurrent")


Meter = GcraMeter | WindowMeter | FixedMeter | DayMeter


def _window_meter(limit: Limit, flight: Flight) -> GcraMeter | WindowMeter | FixedMeter:
    # Request limits pace as GCRA (or, fixed, spend what is left); token limits, where one
    # request can be a large share of the window, as a log of reservations.
    if limit.tokens:
        return WindowMeter(limit)
    return FixedMeter(limit, flight) if limit.fixed else GcraMeter(limit)


class LocalGroup:
    """The meters of one key group in this process (a key's ``group``)."""

    __slots__ = (
        "_ids",
        "concurrency",
        "day",
        "flight",
        "gcra",
        "learned",
        "slowed_at",
        "spec",
        "tz",
    )

    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec
        self.tz: dt.tzinfo = zone(spec.tz)
        self.flight = Flight()
        limits = spec.limits
        self.gcra: list[GcraMeter | WindowMeter | FixedMeter] = []
        for lim in limits:
            if lim.unit != "concurrent" and not lim.daily:
                same = [m for m in self.gcra if meter_id(m.limit) == meter_id(lim)]
                if not same:
                    self.gcra.append(_window_meter(lim, self.flight))
                elif lim.count < same[0].limit.count:  # two limits of one window: the lower
                    same[0].set_limit(Limit(lim.count, lim.seconds, lim.unit, fixed=lim.fixed))
        self.day: list[DayMeter] = [DayMeter(lim, self.tz) for lim in limits if lim.daily]
        conc = [lim for lim in limits if lim.unit == "concurrent"]
        self.concurrency = ConcurrencyMeter(min(conc, key=lambda x: x.count) if conc else None)
        self.learned: list[Limit] = []
        self.slowed_at = 0.0
        self._ids: tuple[str, ...] | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    def meters(self) -> list[Meter]:
        """The window and day meters (not the concurrency count)."""
        return [*self.gcra, *self.day]

    @property
    def limited(self) -> bool:
        return bool(self.gcra or self.day or self.concurrency.limit)

    def ids(self) -> tuple[str, ...]:
        if self._ids is None:
            self._ids = tuple(meter_id(m.limit) for m in self.meters())
        return self._ids

    def ready_at(self, cost: Cost, now: float) -> float:
        """Earliest time every meter admits ``cost``."""
        at = now
        for meter in self.meters():
            ready = meter.ready_at(float(cost.units(meter.limit.unit)), now)
            if ready > at:
                at = ready
        return at

    def learn(self, limit: Limit, used: float = 0.0, now: float = 0.0) -> None:
        same = [m for m in self.meters() if meter_id(m.limit) == meter_id(limit)]
        if not same:
            meter: Meter
            if limit.daily:
                meter = DayMeter(limit, self.tz)
                self.day.append(meter)
            else:
                meter = _window_meter(limit, self.flight)
                if not isinstance(meter, FixedMeter):
                    meter.seed(used, now)
                self.gcra.append(meter)
            self.learned.append(limit)
            self._ids = None
        for meter in same:
            if limit.count < meter.limit.count:
                lowered = Limit(
                    limit.count, meter.limit.seconds, meter.limit.unit, fixed=meter.limit.fixed
                )
                if isinstance(meter, DayMeter):
                    meter.limit = lowered
                else:
                    meter.set_limit(lowered)
            if limit.fixed and meter.limit.fixed is None and isinstance(meter, GcraMeter):
                # Configured without saying: the provider says its window is fixed.
                fixed = FixedMeter(
                    Limit(meter.limit.count, meter.limit.seconds, meter.limit.unit, fixed=True),
                    self.flight,
                )
                self.gcra[self.gcra.index(meter)] = fixed

    def fixed(self) -> list[FixedMeter]:
        return [m for m in self.gcra if isinstance(m, FixedMeter)]

    def slow_down(self, now: float) -> None:
        for meter in self.gcra:
            if isinstance(meter, GcraMeter) and meter.limit.unit == "requests":
                meter.factor = max(MIN_FACTOR, meter.factor * SLOWDOWN)
        self.slowed_at = now

    def recover(self, now: float) -> None:
        self.concurrency.refresh(now)
        slowed = [meter for meter in self.gcra if meter.factor < 1.0]
        if not slowed:
            return
        gained = (now - self.slowed_at) / RECOVERY
        for meter in slowed:  # every slowed meter, each by the whole time since
            meter.factor = min(1.0, meter.factor + gained * (1 - MIN_FACTOR))
        self.slowed_at = now

    def view(self, now: float) -> GroupView:
        limits = [m.limit for m in self.meters()]
        conc = self.concurrency
        if conc.limit is not None:
            limits.append(conc.limit)
        today = []
        for day in self.day:
            start, reset, used = day.window(now)
            today.append(DayUsage(day.limit, start, reset, used))
        learned = list(self.learned)
        if conc.learned and conc.limit is not None:
            learned.append(conc.limit)
        return GroupView(
            self.id,
            tuple(limits),
            tuple(learned),
            tuple(today),
            conc.in_flight,
            min((m.factor for m in self.gcra), default=1.0),
            tuple(m.usage(now) for m in self.fixed()),
        )


_READY = KeyState()


def _count(limit: Limit) -> int:
    return limit.count


class LocalBackend:
    """Meters in this process: exact, immediate, and seen by this process only.

    >>> backend = LocalBackend()
    >>> backend.attach([GroupSpec("fp1", (Limit(60, 60.0),))])
    """

    shared = False
    server_clock = False

    def __init__(self, groups: Iterable[LocalGroup] = (), clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._groups: dict[str, LocalGroup] = {}
        self._states: dict[str, KeyState] = {}
        self._ids = itertools.count(1)
        self.adopt(groups)

    def adopt(self, groups: Iterable[LocalGroup]) -> None:
        """Meter with these very groups (a pool's keys keep theirs); the first one of an id
        stays."""
        for group in groups:
            self._groups.setdefault(group.id, group)

    def attach(self, groups: Sequence[GroupSpec]) -> None:
        for spec in groups:
            if spec.id not in self._groups:
                self._groups[spec.id] = LocalGroup(spec)

    def group(self, group: str) -> LocalGroup:
        """The meters of ``group`` (for tests and the legacy ``key.group`` readers)."""
        return self._groups[group]

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def refresh(self) -> None:
        return None

    def _now(self, now: float | None) -> float:
        return self.clock.time() if now is None else now

    # -- admission ---------------------------------------------------------------------

    async def reserve(
        self,
        group: str,
        key: str,
        cost: Cost,
        *,
        horizon: float,
        take_slot: bool = True,
        now: float | None = None,
    ) -> Answer:
        now = self._now(now)
        state = self._states.get(key, _READY)
        if state.state == "disabled":
            return Answer(now, now, None, Refusal.KEY, state)
        g = self._groups[group]
        conc = g.concurrency
        conc.refresh(now)
        if conc.full:
            return Answer(now, now, None, Refusal.FULL, state)
        # A cooling key sends later than its meters would allow: reserve at that time, so
        # requests held back do not go as a burst.
        at = state.until if state.state in ("cooling", "parked") and state.until > now else now
        later = False  # a day not begun, or a fixed window not reset yet
        for meter in g.gcra:
            ready = meter.ready_at(float(cost.units(meter.limit.unit)), now)
            if ready > at:
                at = ready
            if isinstance(meter, FixedMeter) and ready > now:
                later = True
        for day in g.day:
            ready = day.ready_at(float(cost.units(day.limit.unit)), now)
            if ready > now:
                later = True
                if ready > at:
                    at = ready
        if at - now > horizon or later:
            # Far ahead, or in a window not begun: reserve nothing (a request counted in
            # this window but sent in the next would escape both windows' counts).
            return Answer(now, at, None, Refusal.LATER, state)
        held: list[tuple[Meter, list[float] | None]] = []
        for meter in g.gcra:
            meter.reserve(float(cost.units(meter.limit.unit)), at)
            held.append((meter, meter.last_entry if isinstance(meter, WindowMeter) else None))
        for day in g.day:
            day.reserve(float(cost.units(day.limit.unit)), now)
            held.append((day, None))
        token = g.flight.take(cost.requests)
        slot = False
        if take_slot and at <= now:
            conc.in_flight += 1
            slot = True
        reservation = Reservation(
            str(next(self._ids)),
            group,
            key,
            at,
            cost,
            g.ids(),
            slot,
            tracked=True,
            handle=(held, token),
        )
        return Answer(now, at, reservation, None, state)

    async def begin(self, reservation: Reservation, *, now: float | None = None) -> Answer:
        now = self._now(now)
        state = self._states.get(reservation.key, _READY)
        if state.blocks(now):  # the key went bad while the request waited
            self.refund(reservation, reservation.cost)
            return Answer(now, now, None, Refusal.KEY, state)
        conc = self._groups[reservation.group].concurrency
        if reservation.slot:
            return Answer(now, reservation.at, reservation, None, state)
        conc.refresh(now)
        if conc.full:  # taken while it waited
            self.refund(reservation, reservation.cost)
            return Answer(now, now, None, Refusal.FULL, state)
        conc.in_flight += 1
        return Answer(now, reservation.at, dataclasses.replace(reservation, slot=True), None, state)

    def estimate(self, group: str, cost: Cost, now: float) -> tuple[bool, float]:
        g = self._groups[group]
        return g.concurrency.full, g.ready_at(cost, now)

    # -- settling ----------------------------------------------------------------------

    def release(self, reservation: Reservation) -> None:
        g = self._groups[reservation.group]
        if reservation.slot:
            g.concurrency.in_flight -= 1
        g.flight.land(self._token(reservation))

    def _held(self, reservation: Reservation) -> Sequence[tuple[Meter, list[float] | None]]:
        handle: tuple[Sequence[tuple[Meter, list[float] | None]], int] | None
        handle = reservation.handle
        return handle[0] if handle else ()

    def _token(self, reservation: Reservation) -> int:
        handle: tuple[object, int] | None = reservation.handle
        return handle[1] if handle else 0

    def settle(self, reservation: Reservation, held: Cost, used: Cost) -> None:
        if held.tokens == used.tokens and held.input == used.input and held.output == used.output:
            return
        entries: dict[int, list[float]] | None = None
        for meter in self._groups[reservation.group].meters():
            unit = meter.limit.unit
            if not meter.limit.tokens:
                continue
            delta = float(used.units(unit) - held.units(unit))
            if not delta:
                continue
            if isinstance(meter, WindowMeter):
                if entries is None:
                    entries = {id(m): e for m, e in self._held(reservation) if e is not None}
                entry = entries.get(id(meter))
                if entry is not None:  # its own reservation, not whichever came last
                    meter.adjust_entry(entry, delta)
            else:
                meter.adjust(delta)

    def refund(self, reservation: Reservation, held: Cost) -> None:
        cost = reservation.cost
        for meter, entry in self._held(reservation):
            unit = meter.limit.unit
            units = float(held.units(unit) if meter.limit.tokens else cost.requests)
            if isinstance(meter, WindowMeter):
                if entry is not None:
                    meter.adjust_entry(entry, -units)
            else:
                meter.adjust(-units)
        self._groups[reservation.group].flight.land(self._token(reservation))

    # -- what answers teach ------------------------------------------------------------

    def key_state(self, key: str) -> KeyState:
        return self._states.get(key, _READY)

    def set_key_state(self, key: str, state: KeyState) -> None:
        self._states[key] = self._states.get(key, _READY).merge(state)

    def learn(self, group: str, limit: Limit, used: float = 0.0) -> None:
        if limit.unit == "concurrent":
            g = self._groups[group]
            conc = g.concurrency
            if conc.base is None or limit.count < conc.base.count:
                conc.base = limit
                conc.limit = limit if conc.limit is None else min(conc.limit, limit, key=_count)
                g.learned.append(limit)
            return
        self._groups[group].learn(limit, used, self.clock.time())

    def reconcile(
        self,
        reservation: Reservation,
        meter: str,
        remaining: int | None,
        reset_at: float | None,
        slack: float = 0.0,
    ) -> None:
        now = self.clock.time()
        for m in self._groups[reservation.group].fixed():
            if meter_id(m.limit) == meter:
                m.reconcile(remaining, reset_at, slack, now)

    def throttle(self, group: str, in_flight: int, now: float | None = None) -> None:
        g = self._groups[group]
        g.concurrency.throttle(max(in_flight, g.concurrency.in_flight), self._now(now))

    def exhaust(self, group: str, meter: str, until: float) -> None:
        for m in self._groups[group].meters():
            if meter_id(m.limit) == meter:
                m.exhaust_until(until)

    def slow_down(self, group: str, now: float | None = None) -> None:
        self._groups[group].slow_down(self._now(now))

    def recover(self, group: str, now: float | None = None) -> None:
        self._groups[group].recover(self._now(now))

    # -- daily usage and display -------------------------------------------------------

    def restore_day(self, group: str, day_start: float, unit: str, used: float) -> None:
        for day in self._groups[group].day:
            if day.limit.unit == unit:
                day.restore_day(day_start, used)

    def view(self, group: str, now: float) -> GroupView:
        return self._groups[group].view(now)
