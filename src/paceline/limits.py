"""Limits: what a key may send, read from text like ``"15/minute"`` or ``"8 concurrent"``.

A :class:`Limit` is "N requests (or tokens) per window" or "N concurrent"; a :class:`Cost`
is what one request is expected to use. The meters that enforce limits live in
:mod:`paceline.meters`: GCRA with a small burst (:func:`default_burst`) for request windows,
a reservation log (or time buckets, in Redis) for token windows, a counter that resets at
midnight in a time zone for daily windows (:func:`day_start`, :func:`next_day_start`),
a count of what is left until the announced reset for *fixed* windows, and a count of
requests in flight.

Two kinds of window. A *smooth* one is a rate the provider enforces over any stretch of
its length (OpenAI quantises per-minute limits to short periods): requests are spaced
evenly. A *fixed* one is a count the provider announces with what is left and when it
resets (GitHub's ``x-ratelimit-remaining`` / ``x-ratelimit-reset``, the IETF ``RateLimit``
fields): what is left is spent as fast as the job can, then the key waits for the reset.
``fixed=None`` (the default) means "as the provider's answers say" (smooth until an answer
announces a fixed window).

>>> parse_limit("1000000 tokens/minute")
Limit(count=1000000, seconds=60.0, unit='tokens', fixed=None)
>>> Limit("5000/hour", fixed=True).describe()
'5000/hour fixed'
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

__all__ = [
    "TOKEN_UNITS",
    "Cost",
    "Limit",
    "day_start",
    "default_burst",
    "next_day_start",
    "parse_limit",
    "zone",
]

Unit = Literal["requests", "tokens", "input_tokens", "output_tokens", "concurrent"]
#: Units counted in tokens: all tokens of a request, or only its input (prompt) or output
#: (completion) side, for providers that meter the two apart (Anthropic).
TOKEN_UNITS = frozenset({"tokens", "input_tokens", "output_tokens"})

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip

_KIND = r"(?:(?P<kind>fixed|smooth)\s+)?"
_LIMIT = re.compile(
    r"^\s*" + _KIND + r"(?P<count>\d[\d_,]*)\s*"
    r"(?P<unit>requests?|reqs?|(?:(?P<side>input|output|in|out)[\s_-]+)?tokens?)?\s*"
    r"(?:/|per\s+)\s*(?P<n>\d+(?:\.\d+)?)?\s*(?P<per>[a-z]+)\s*"
    r"(?:\(?\s*(?P<after>fixed|smooth)\s*\)?)?\s*$",
    re.IGNORECASE,
)
_CONCURRENT = re.compile(r"^\s*(?P<count>\d+)\s*(?:concurrent|in[- ]flight)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Cost:
    """What one request is expected to use: requests and tokens (settled from the answer).

    ``tokens`` counts both sides of a request; where a provider meters input and output
    tokens apart, say how they split, so a long prompt with a short answer is not charged
    its whole size against the output limit: ``Cost(input_tokens=4000, output_tokens=200)``
    (``tokens`` is then their sum), or ``Cost(tokens=4200, output_tokens=200)``. A side
    not given is charged the whole ``tokens`` (the safe side).
    """

    requests: int = 1
    tokens: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None

    def __post_init__(self) -> None:
        sides = (self.input_tokens or 0) + (self.output_tokens or 0)
        if sides > self.tokens:
            object.__setattr__(self, "tokens", sides)

    @property
    def input(self) -> int:
        """Input tokens expected (all of ``tokens`` when the split is not known)."""
        if self.input_tokens is not None:
            return self.input_tokens
        if self.output_tokens is not None:
            return max(0, self.tokens - self.output_tokens)
        return self.tokens

    @property
    def output(self) -> int:
        """Output tokens expected (all of ``tokens`` when the split is not known)."""
        if self.output_tokens is not None:
            return self.output_tokens
        if self.input_tokens is not None:
            return max(0, self.tokens - self.input_tokens)
        return self.tokens

    def units(self, unit: str) -> int:
        """What this cost counts on a meter of ``unit``."""
        if unit == "tokens":
            return self.tokens
        if unit == "input_tokens":
            return self.input
        if unit == "output_tokens":
            return self.output
        return self.requests


@dataclass(frozen=True, slots=True, init=False)
class Limit:
    """``count`` requests or tokens per ``seconds``; or ``count`` concurrent requests.

    Built from numbers or from text: ``Limit(5000, 3600.0)``, ``Limit("5000/hour")``,
    ``Limit("5000/hour", fixed=True)`` (or ``"5000/hour fixed"``). ``fixed`` says how the
    window behaves (see the module's notes); ``None``: as the provider's answers say.
    """

    count: int
    seconds: float
    unit: Unit = "requests"
    fixed: bool | None = field(default=None, compare=True)

    def __init__(
        self,
        count: int | str,
        seconds: float | None = None,
        unit: Unit | None = None,
        *,
        fixed: bool | None = None,
    ) -> None:
        if isinstance(count, str):
            parsed = parse_limit(count)
            count, seconds = parsed.count, parsed.seconds
            unit = unit or parsed.unit
            fixed = parsed.fixed if fixed is None else fixed
        if seconds is None:
            raise ConfigError(f"limit {count}: give its window, e.g. Limit({count}, 60.0)")
        unit = unit or "requests"
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "seconds", float(seconds))
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "fixed", None if unit == "concurrent" else fixed)
        if self.count < 1:
            raise ConfigError(f"limit {self.describe()}: the count must be at least 1")
        if self.unit != "concurrent" and self.seconds <= 0:
            raise ConfigError(f"limit {self.describe()}: the window must be positive")

    def __repr__(self) -> str:
        return (
            f"Limit(count={self.count!r}, seconds={self.seconds!r}, unit={self.unit!r}, "
            f"fixed={self.fixed!r})"
        )

    @property
    def daily(self) -> bool:
        """Windows of a day or more reset on the calendar instead of sliding."""
        return self.unit != "concurrent" and self.seconds >= 86400

    @property
    def tokens(self) -> bool:
        """Whether the limit counts tokens (all, or one side)."""
        return self.unit in TOKEN_UNITS

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
        unit = {"tokens": " tokens", "input_tokens": " input tokens"}.get(self.unit, "")
        unit = " output tokens" if self.unit == "output_tokens" else unit
        kind = " fixed" if self.fixed else ""
        return f"{self.count}{unit}/{window}{kind}"


def parse_limit(text: str | Limit) -> Limit:
    """Read ``"15/minute"``, ``"1500/day"``, ``"60/3s"``, ``"1000000 tokens/minute"``,
    ``"400000 input tokens/minute"``, ``"5000/hour fixed"``, ``"8 concurrent"``."""
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
            "'1000000 tokens/minute', '5000/hour fixed' or '8 concurrent'"
        )
    count = int(m["count"].replace("_", "").replace(",", ""))
    seconds = float(m["n"] or 1) * _UNITS[m["per"].lower()]
    side = (m["side"] or "").lower()
    unit: Unit = "requests"
    if (m["unit"] or "").lower().rstrip("s").endswith("token"):
        unit = "input_tokens" if side.startswith("in") else "tokens"
        unit = "output_tokens" if side.startswith("out") else unit
    kind = (m["kind"] or m["after"] or "").lower()
    fixed = {"fixed": True, "smooth": False}.get(kind)
    return Limit(count, seconds, unit, fixed=fixed)


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
