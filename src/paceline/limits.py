"""Limits and the meters that enforce them, as reservations.

A :class:`Limit` is "N requests (or tokens) per window" or "N concurrent". Each becomes a
meter on a key (or on a group of keys sharing one upstream quota):

* windows shorter than a day: GCRA (the generic cell rate algorithm). One number per meter,
  the *theoretical arrival time*; a request reserves its cost by pushing it forward, so
  concurrent requests get distinct send times and a burst can never exceed the limit;
* daily (and longer) windows: a counter that resets at midnight in a time zone (Gemini's
  per-day quotas reset at midnight Pacific), because a daily quota is spent as fast as the
  shorter limits allow, not spread evenly over the day;
* ``N concurrent``: a count of requests in flight.

The GCRA meters allow a small burst (1 % of the limit, at most a second's worth, at
least one request) and space
requests so that no window of the limit's length ever holds more than the limit: with a
burst of *b*, the emission interval is ``window / (limit - b + 1)``.

>>> parse_limit("1000000 tokens/minute")
Limit(count=1000000, seconds=60.0, unit='tokens')
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

__all__ = [
    "ConcurrencyMeter",
    "Cost",
    "DayMeter",
    "GcraMeter",
    "Limit",
    "WindowMeter",
    "day_start",
    "next_day_start",
    "parse_limit",
    "zone",
]

Unit = Literal["requests", "tokens", "concurrent"]

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip

_LIMIT = re.compile(
    r"^\s*(?P<count>\d[\d_,]*)\s*(?P<unit>requests?|reqs?|tokens?)?\s*"
    r"(?:/|per\s+)\s*(?P<n>\d+(?:\.\d+)?)?\s*(?P<per>[a-z]+)\s*$",
    re.IGNORECASE,
)
_CONCURRENT = re.compile(r"^\s*(?P<count>\d+)\s*(?:concurrent|in[- ]flight)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Cost:
    """What one request is expected to use: requests and tokens (settled from the answer)."""

    requests: int = 1
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Limit:
    """``count`` requests or tokens per ``seconds``; or ``count`` concurrent requests."""

    count: int
    seconds: float
    unit: Unit = "requests"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"limit {self.describe()}: the count must be at least 1")
        if self.unit != "concurrent" and self.seconds <= 0:
            raise ConfigError(f"limit {self.describe()}: the window must be positive")

    @property
    def daily(self) -> bool:
        """Windows of a day or more reset on the calendar instead of sliding."""
        return self.unit != "concurrent" and self.seconds >= 86400

    def per_minute(self) -> float:
        return math.inf if self.unit == "concurrent" else self.count * 60.0 / self.seconds

    def describe(self) -> str:
        if self.unit == "concurrent":
            return f"{self.count} concurrent"
        for name, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0), ("s", 1.0)):
            if self.seconds > 0 and self.seconds % size == 0:
                n = int(self.seconds // size)
                window = name if n == 1 else f"{n}{name[0] if name != 's' else 's'}"
                break
        else:
            window = f"{self.seconds:g}s"
        unit = " tokens" if self.unit == "tokens" else ""
        return f"{self.count}{unit}/{window}"


def parse_limit(text: str | Limit) -> Limit:
    """Read ``"15/minute"``, ``"1500/day"``, ``"60/3s"``, ``"1000000 tokens/minute"``,
    ``"8 concurrent"``."""
    if isinstance(text, Limit):
        return text
    if not isinstance(text, str):
        text = repr(text)  # a number or a list where a limit's text belongs
    if m := _CONCURRENT.match(text):
        return Limit(int(m["count"]), 0.0, "concurrent")
    m = _LIMIT.match(text)
    if m is None or m["per"].lower() not in _UNITS:
        raise ConfigError(
            f"limit {text!r}: write it like '15/minute', '1500/day', '60/3s', "
            "'1000000 tokens/minute' or '8 concurrent'"
        )
    count = int(m["count"].replace("_", "").replace(",", ""))
    seconds = float(m["n"] or 1) * _UNITS[m["per"].lower()]
    unit: Unit = "tokens" if (m["unit"] or "").lower().startswith("token") else "requests"
    return Limit(count, seconds, unit)


def zone(name: str | None) -> dt.tzinfo:
    """The time zone daily windows reset in (UTC when none is given)."""
    if name is None:
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"day_resets: unknown time zone {name!r}") from None


def day_start(now: float, tz: dt.tzinfo) -> float:
    """Epoch seconds of the last midnight in ``tz`` at or before ``now``."""
    local = dt.datetime.fromtimestamp(now, tz)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def next_day_start(now: float, tz: dt.tzinfo) -> float:
    """Epoch seconds of the next midnight in ``tz`` (DST days are 23 or 25 hours long)."""
    local = dt.datetime.fromtimestamp(now, tz).date() + dt.timedelta(days=1)
    return dt.datetime(local.year, local.month, local.day, tzinfo=tz).timestamp()


def default_burst(limit: Limit) -> int:
    """1 % of the limit, and no more than one second's worth of its rate: small enough
    that a provider enforcing the limit over shorter spans (as OpenAI does) sees no
    spike, large enough to cost under 1 % of the rate."""
    per_second = math.ceil(limit.count / limit.seconds)
    return max(1, min(1 + limit.count // 100, per_second))


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


#: Past a window's edge by this much, so a provider counting its window closed on both
#: ends does not see the old request and the new one together.
_EDGE = 0.001


class WindowMeter:
    """A sliding window kept as a log of reservations: for token limits.

    One request may carry thousands of tokens, a large share of the limit; GCRA would then
    either let a window hold the limit plus one request, or space requests by the largest
    one. The log admits a request when the tokens reserved in the window ending at its send
    time, plus its own, fit the limit: never more, and no slack lost.
    """

    __slots__ = ("entries", "factor", "last_entry", "limit", "total")

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.entries: deque[list[float]] = deque()  # [send time, units], in time order
        self.total = 0.0  # units in ``entries``
        self.last_entry: list[float] | None = None  # the latest reservation, for its lease
        self.factor = 1.0  # as GcraMeter's; token windows are not slowed down

    def set_limit(self, limit: Limit) -> None:
        self.limit = limit

    def _forget(self, now: float) -> None:
        horizon = now - self.limit.seconds
        entries = self.entries
        while entries and entries[0][0] <= horizon:
            self.total -= entries.popleft()[1]

    def ready_at(self, cost: float, now: float) -> float:
        """Earliest time (not before the last reservation) ``cost`` fits the window."""
        self._forget(now)
        entries, window = self.entries, self.limit.seconds
        at = max(now, entries[-1][0]) if entries else now
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
        return at

    def reserve(self, cost: float, now: float) -> float:
        at = self.ready_at(cost, now)
        self.last_entry = None
        if cost > 0:
            self.last_entry = [at, cost]
            self.entries.append(self.last_entry)
            self.total += cost
        return at

    def adjust_entry(self, entry: list[float], units: float) -> None:
        """Settle one reservation (its lease's), not whichever came last."""
        change = max(-entry[1], units)
        entry[1] += change
        self.total += change

    def adjust(self, units: float) -> None:
        """Settle the latest reservations up (more used) or down (fewer, or refused)."""
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
        self._forget(now)
        return sum(units for at, units in self.entries if at <= now)

    def exhaust_until(self, until: float) -> None:
        """Nothing fits before ``until``: a full window's worth ending just then."""
        start = until - self.limit.seconds
        if not self.entries or self.entries[-1][0] <= start:
            self.entries.append([start, float(self.limit.count)])
            self.total += self.limit.count


class DayMeter:
    """Units per calendar day (or N days) in a time zone, as a counter."""

    __slots__ = ("limit", "reset_at", "tz", "used_units", "window_start")

    def __init__(self, limit: Limit, tz: dt.tzinfo) -> None:
        self.limit = limit
        self.tz = tz
        self.used_units = 0.0
        self.window_start = -math.inf
        self.reset_at = -math.inf

    def _roll(self, now: float) -> None:
        if now >= self.reset_at:
            self.window_start = day_start(now, self.tz)
            end = self.window_start
            for _ in range(max(1, round(self.limit.seconds / 86400))):
                end = next_day_start(end, self.tz)
            self.reset_at = end
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
        self._roll(now)
        return self.used_units

    def exhaust_until(self, until: float) -> None:
        self.used_units = float(self.limit.count)
        self.reset_at = max(self.reset_at, until)

    def restore(self, used: float, now: float) -> None:
        """Start from what the store says was spent today."""
        self._roll(now)
        self.used_units = used


class ConcurrencyMeter:
    """At most ``limit.count`` requests in flight."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.in_flight = 0

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit.count
