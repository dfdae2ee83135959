"""A circuit breaker: when the provider fails for everyone, pause instead of failing items.

Attempts end in one of two ways for the circuit: an *outage* (the connection failed, the
request timed out, or the provider answered 5xx), or anything else. When nearly all of
the last :data:`SAMPLE` attempts (ended within :data:`WINDOW` seconds) failed as
outages, the circuit opens: workers start no attempt,
and one *probe* goes every few seconds (1, 1.5, 2.25 … up to :data:`MAX_PROBE_EVERY`). The
first probe that gets through closes it, and the run goes on.

An attempt lost to an outage does not use up its item's retries: while the circuit is
open, or nearly half the recent attempts fail as outages, such a failure is a retry that
does not count.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from typing import Any

import httpx

from paceline.clock import Clock

from .progress import Progress
from .state import RunState

__all__ = ["Circuit", "is_outage"]

SAMPLE = 12
WINDOW = 30.0
OPEN_RATIO = 0.9
SUSPECT_RATIO = 0.5
MAX_PROBE_EVERY = 10.0


def is_outage(exc: BaseException) -> bool:
    """Whether an attempt failed because the provider was unreachable or failing: a
    connection or timeout error, or a 5xx answer (from ``raise_for_status`` or an SDK)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    if isinstance(exc, (httpx.TransportError, TimeoutError, ConnectionError)):
        return not isinstance(exc, httpx.UnsupportedProtocol)
    if isinstance(exc, sqlite3.Error):
        return False
    status: Any = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and status >= 500


class Circuit:
    """Open while the provider fails for everyone; closed otherwise."""

    def __init__(self, clock: Clock, progress: Progress, state: RunState) -> None:
        self.clock = clock
        self.progress = progress
        self.state = state
        self.recent: deque[tuple[float, bool]] = deque()  # (when, was an outage)
        self.outages = 0  # how many of ``recent`` were outages
        self.opened_at: float | None = None  # wall time, for people
        self._opened_mono = 0.0
        self._probe_every = 1.0
        self._next_probe = 0.0
        self._probing = False
        self._closed = asyncio.Event()
        self._closed.set()
        self.reason = ""

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def _trim(self, now: float) -> None:
        recent = self.recent
        while recent and (len(recent) > SAMPLE or recent[0][0] < now - WINDOW):
            self.outages -= recent.popleft()[1]

    def _outage_share(self) -> tuple[int, float]:
        return self.outages, self.outages / len(self.recent) if self.recent else 0.0

    def record(self, outage: bool, what: str = "") -> None:
        """The end of an attempt: an outage failure, or not (success or another error)."""
        if not outage and not self.outages and not self._probing and not self.open:
            return  # all is well: the common case costs nothing
        now = self.clock.monotonic()
        self.recent.append((now, outage))
        self.outages += outage
        self._trim(now)
        if self._probing:
            self._probing = False
            if outage:
                self._probe_every = min(MAX_PROBE_EVERY, self._probe_every * 1.5)
                self._next_probe = now + self._probe_every
            else:
                self._close(now)
            return
        if not outage and self.open:
            self._close(now)  # an attempt that began before the opening got through
            return
        _, share = self._outage_share()
        full = len(self.recent) >= SAMPLE
        if outage and not self.open and full and share >= OPEN_RATIO:
            self.opened_at = self.clock.time()
            self._opened_mono = now
            self._probe_every = 1.0
            self._next_probe = now + self._probe_every
            self._closed.clear()
            self.reason = what
            self.progress.note(
                f"the provider fails for every request ({what}): pausing, probing until it answers"
            )

    def _close(self, now: float) -> None:
        if self.opened_at is not None:
            self.progress.note(
                f"the provider answers again: resuming after {now - self._opened_mono:.0f} s"
            )
        self.opened_at = None
        self.recent.clear()
        self.outages = 0
        self._closed.set()

    def forgives(self) -> bool:
        """Whether an outage failure now should not use up its item's retries."""
        if self.open:
            return True
        failures, share = self._outage_share()
        return failures >= SAMPLE // 2 and share >= SUSPECT_RATIO

    async def admit(self) -> None:
        """Wait until an attempt may start: at once while closed; while open, only as
        the next probe."""
        while self.open and self.state.taking:
            now = self.clock.monotonic()
            if not self._probing and now >= self._next_probe:
                self._probing = True
                return
            wait = max(0.05, self._next_probe - now) if not self._probing else 1.0
            closed = asyncio.ensure_future(self._closed.wait())
            sleeper = asyncio.ensure_future(self.clock.sleep(min(wait, 1.0)))
            try:
                await asyncio.wait([closed, sleeper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                sleeper.cancel()

    def describe(self) -> dict[str, Any] | None:
        """For ``status`` and the dashboard: ``None`` while closed."""
        if self.opened_at is None:
            return None
        now = self.clock.monotonic()
        return {
            "state": "open",
            "since": self.opened_at,
            "reason": self.reason,
            "next_probe_in": round(max(0.0, self._next_probe - now), 1),
        }
