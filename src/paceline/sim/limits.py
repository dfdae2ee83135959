"""The per-key meters the simulated provider enforces.

Each key has up to five meters: requests and tokens per sliding minute, requests per fixed
hour (GitHub's primary limit: the window opens with the first request and closes an hour
later), requests per day (a fixed window ending at the next local midnight, as Gemini's daily
quotas do) and requests in flight. A request is admitted only if every meter has room, and a
rejected request spends nothing, so a client that backs off correctly loses no quota.

Time is read from an injected :class:`~paceline.clock.Clock`, wall time throughout: every
reset a provider reports is a wall-clock instant, and a fake clock moves both alike.

>>> from paceline.clock import FakeClock
>>> meter = KeyMeter(KeyLimits(rpm=2), FakeClock())
>>> [meter.try_acquire() is None for _ in range(3)]
[True, True, False]
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from paceline.clock import SYSTEM_CLOCK, Clock
from paceline.sim.config import KeyLimits

__all__ = [
    "HOUR",
    "MINUTE",
    "FixedWindow",
    "KeyMeter",
    "KeyState",
    "MeterName",
    "Rejection",
    "SlidingWindow",
    "TokenBucket",
    "Window",
    "next_midnight",
]

MINUTE = 60.0
HOUR = 3600.0

MeterName = Literal["rpm", "tpm", "rpd", "rph", "concurrency"]


@dataclass(frozen=True, slots=True)
class Window:
    """One meter as a provider reports it in headers."""

    limit: int
    remaining: int
    used: int
    resets_at: float
    """Epoch seconds at which the meter is back to its initial (full) state."""


@dataclass(frozen=True, slots=True)
class KeyState:
    """A snapshot of every enforced meter of one key; unenforced meters are ``None``."""

    now: float
    rpm: Window | None
    tpm: Window | None
    rpd: Window | None
    rph: Window | None
    in_flight: int
    concurrency: int | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request was refused, in the terms providers put in their 429 messages."""

    meter: MeterName
    limit: int
    used: int
    requested: int
    retry_after: float | None
    """Seconds until the request would fit; ``None`` if it never can (asks more than the limit)."""


class SlidingWindow:
    """Amounts spent during the last ``span`` seconds (a sliding log, as OpenAI meters)."""

    __slots__ = ("_entries", "_total", "limit", "span")

    def __init__(self, limit: int, span: float = MINUTE) -> None:
        self.limit = limit
        self.span = span
        # (time, amount) oldest first; expired entries leave from the left in O(1)
        self._entries: deque[tuple[float, int]] = deque()
        self._total = 0

    def _expire(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.span
        while entries and entries[0][0] <= horizon:
            self._total -= entries.popleft()[1]

    def wait_for(self, amount: int, now: float) -> float | None:
        """Seconds until ``amount`` fits (0 if it fits now, ``None`` if it never will)."""
        self._expire(now)
        if self._total + amount <= self.limit:
            return 0.0
        if amount > self.limit:
            return None
        excess = self._total + amount - self.limit
        for at, spent in self._entries:
            excess -= spent
            if excess <= 0:
                return at + self.span - now
        raise AssertionError("unreachable: the whole log frees more than the excess")

    def spend(self, amount: int, now: float) -> None:
        """Record ``amount`` spent at ``now``."""
        if amount > 0:
            self._entries.append((now, amount))
            self._total += amount

    def window(self, now: float) -> Window:
        """Limit, remaining and the instant the log is empty again."""
        self._expire(now)
        resets_at = self._entries[-1][0] + self.span if self._entries else now
        remaining = max(0, self.limit - self._total)
        return Window(self.limit, remaining, self._total, resets_at)


class TokenBucket:
    """A bucket of ``limit`` refilled at ``limit`` per ``span``, continuously (Anthropic
    documents its limits so): full at the start, never above full."""

    __slots__ = ("_at", "_level", "limit", "span")

    def __init__(self, limit: int, span: float = MINUTE) -> None:
        self.limit = limit
        self.span = span
        self._level = float(limit)
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._level = min(self.limit, self._level + (now - self._at) * self.limit / self.span)
        self._at = now if self._at is None else max(self._at, now)

    def wait_for(self, amount: int, now: float) -> float | None:
        """Seconds until ``amount`` fits (0 if it fits now, ``None`` if it never will)."""
        self._refill(now)
        if amount <= self._level:
            return 0.0
        if amount > self.limit:
            return None
        return (amount - self._level) * self.span / self.limit

    def spend(self, amount: int, now: float) -> None:
        """Take ``amount`` out at ``now``."""
        self._refill(now)
        self._level -= amount

    def give_back(self, amount: int, now: float) -> None:
        """Put back what an answer did not use (never above full)."""
        self._refill(now)
        self._level = min(float(self.limit), self._level + amount)

    def window(self, now: float) -> Window:
        """Limit, what is left (whole) and the instant the bucket is full again."""
        self._refill(now)
        level = max(0.0, self._level)
        full_at = now + (self.limit - level) * self.span / self.limit
        return Window(self.limit, int(level), self.limit - int(level), full_at)


class FixedWindow:
    """A count that starts from zero when a window closes.

    ``next_end(now)`` says when a window opened at ``now`` closes: an hour later for GitHub,
    the next local midnight for daily quotas. The window opens with its first request.
    """

    __slots__ = ("_count", "_end", "_next_end", "limit")

    def __init__(self, limit: int, next_end: Callable[[float], float]) -> None:
        self.limit = limit
        self._next_end = next_end
        self._end: float | None = None
        self._count = 0

    def open_at(self, left: int, end: float) -> None:
        """Start with a window already open: ``left`` requests left until ``end``."""
        self._count = max(0, self.limit - left)
        self._end = end

    def _roll(self, now: float) -> None:
        if self._end is not None and now >= self._end:
            self._end = None
            self._count = 0

    def wait_for(self, amount: int, now: float) -> float | None:
        """Seconds until ``amount`` fits (0 if it fits now, ``None`` if it never will)."""
        self._roll(now)
        if self._count + amount <= self.limit:
            return 0.0
        if amount > self.limit:
            return None
        return self.resets_at(now) - now

    def spend(self, amount: int, now: float) -> None:
        """Record ``amount`` spent at ``now``, opening a window if none is open."""
        self._roll(now)
        if self._end is None:
            self._end = self._next_end(now)
        self._count += amount

    def resets_at(self, now: float) -> float:
        """When the current window closes (or would, if a request opened one now)."""
        self._roll(now)
        return self._end if self._end is not None else self._next_end(now)

    def window(self, now: float) -> Window:
        """Limit, remaining and the window's closing instant."""
        resets_at = self.resets_at(now)
        return Window(self.limit, max(0, self.limit - self._count), self._count, resets_at)


def next_midnight(now: float, tz: ZoneInfo) -> float:
    """Epoch seconds of the first midnight in ``tz`` after ``now``.

    Computed from the local date rather than by adding 86 400 s, so days that are 23 or 25
    hours long (daylight-saving changes) end at the right instant.
    """
    local = dt.datetime.fromtimestamp(now, tz)
    tomorrow = local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(0), tzinfo=tz).timestamp()


class KeyMeter:
    """All meters of one key; admits a request only if every meter has room.

    ``try_acquire`` returns ``None`` when admitted (the caller then holds an in-flight slot
    and must call :meth:`release`) or the :class:`Rejection` of the first meter that is full,
    checking the longest windows first so a client learns the wait that actually binds.
    """

    __slots__ = ("_clock", "_meters", "concurrency", "in_flight", "rpd", "rph", "rpm", "tpm")

    def __init__(
        self,
        limits: KeyLimits,
        clock: Clock = SYSTEM_CLOCK,
        day_tz: ZoneInfo | None = None,
        *,
        token_bucket: bool = False,
    ) -> None:
        tz = day_tz or ZoneInfo("America/Los_Angeles")
        self._clock = clock
        self.rpm = SlidingWindow(limits.rpm) if limits.rpm else None
        self.tpm: SlidingWindow | TokenBucket | None = None
        if limits.tpm:
            self.tpm = TokenBucket(limits.tpm) if token_bucket else SlidingWindow(limits.tpm)
        self.rph = FixedWindow(limits.rph, lambda now: now + HOUR) if limits.rph else None
        if self.rph is not None and (limits.rph_left is not None or limits.rph_reset):
            left = self.rph.limit if limits.rph_left is None else limits.rph_left
            self.rph.open_at(left, clock.time() + (limits.rph_reset or HOUR))
        self.rpd = (
            FixedWindow(limits.rpd, lambda now: next_midnight(now, tz)) if limits.rpd else None
        )
        self.concurrency = limits.concurrency
        self.in_flight = 0
        # (name, meter, spends tokens?) in the order rejections are reported
        candidates: list[tuple[MeterName, SlidingWindow | TokenBucket | FixedWindow | None]] = [
            ("rpd", self.rpd),
            ("rph", self.rph),
            ("rpm", self.rpm),
            ("tpm", self.tpm),
        ]
        self._meters = [
            (name, meter, name == "tpm") for name, meter in candidates if meter is not None
        ]

    def try_acquire(self, tokens: int = 0) -> Rejection | None:
        """Admit one request costing ``tokens``, or say why not (spending nothing)."""
        now = self._clock.time()
        for name, meter, by_tokens in self._meters:
            amount = tokens if by_tokens else 1
            if by_tokens and amount <= 0:
                continue
            wait = meter.wait_for(amount, now)
            if wait != 0.0:
                used = meter.window(now).used
                return Rejection(name, meter.limit, used, amount, wait)
        if self.concurrency is not None and self.in_flight >= self.concurrency:
            # A slot frees when some answer finishes, which the meter cannot foresee.
            return Rejection("concurrency", self.concurrency, self.in_flight, 1, 1.0)
        for _, meter, by_tokens in self._meters:
            meter.spend(tokens if by_tokens else 1, now)
        self.in_flight += 1
        return None

    def release(self, unused_tokens: int = 0) -> None:
        """Give back the in-flight slot of an admitted request once it is answered, and
        to a token bucket the tokens the answer did not use (a sliding minute keeps them:
        OpenAI counts ``max_tokens`` whole)."""
        self.in_flight -= 1
        if unused_tokens > 0 and isinstance(self.tpm, TokenBucket):
            self.tpm.give_back(unused_tokens, self._clock.time())

    def state(self) -> KeyState:
        """Every meter as it stands now, for rate-limit headers."""
        now = self._clock.time()
        return KeyState(
            now=now,
            rpm=self.rpm.window(now) if self.rpm else None,
            tpm=self.tpm.window(now) if self.tpm else None,
            rpd=self.rpd.window(now) if self.rpd else None,
            rph=self.rph.window(now) if self.rph else None,
            in_flight=self.in_flight,
            concurrency=self.concurrency,
        )
