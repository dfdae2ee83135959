"""One place to read time from.

Limiter, retry and scheduling code never call :func:`time.time` or :func:`asyncio.sleep`
directly: they ask a :class:`Clock`. Production code uses :data:`SYSTEM_CLOCK`; tests pass a
:class:`FakeClock` and move it forward instead of sleeping.

>>> clock = FakeClock(start=1_000.0)
>>> clock.advance(5)
>>> clock.time()
1005.0
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Wall time (for stored due dates) and monotonic time (for intervals)."""

    def time(self) -> float:
        """Seconds since the epoch; what goes into the store."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; what intervals are measured with."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK: Clock = SystemClock()


class FakeClock:
    """A clock that moves only when told to.

    ``sleep`` parks the caller until :meth:`advance` moves time past its wake-up point, so
    code that waits 60 seconds is tested in microseconds.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._start = start
        # min-heap of (wake-up time, tie-breaker, future) so advance() wakes sleepers in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._start

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._counter), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
