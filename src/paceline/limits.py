"""Limits: what a key may send, read from text like ``"15/minute"`` or ``"8 concurrent"``.

A :class:`Limit` is "N requests (or tokens) per window" or "N concurrent"; a :class:`Cost`
is what one request is expected to use. The meters that enforce limits live in
:mod:`paceline.meters`: GCRA with a small burst (:func:`default_burst`) for request windows,
a reservation log (or time buckets, in Redis) for token windows, a counter that resets at
midnight in a time zone for daily windows (:func:`day_start`, :func:`next_day_start`),
and a count of requests in flight.

>>> parse_limit("1000000 tokens/minute")
Limit(count=1000000, seconds=60.0, unit='tokens')
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

__all__ = [
    "Cost",
    "Limit",
    "day_start",
    "default_burst",
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
