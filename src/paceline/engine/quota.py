"""The key pool's side of a run: binding the limiter, and what goes to the store.

Each commit carries, per key, what changed since the last one (requests, tokens, 429s,
errors, state) and, per key group, today's spent quota, so a restart knows both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from paceline.clock import Clock
from paceline.keys import KeyPool
from paceline.meters import open_meter_backend
from paceline.plan import capacity
from paceline.store import KeyUsage

from .storeio import StoreIO

__all__ = ["DayUsage", "PoolRun"]

#: (group fingerprint, day window start, unit, used)
DayUsage = tuple[str, float, str, float]


class PoolRun:
    """A key pool bound to one run."""

    def __init__(self, pool: KeyPool, clock: Clock, limiter: str | None = None) -> None:
        self.pool = pool
        self.clock = clock
        self.limiter_url = limiter
        self.shared = bool(limiter) and limiter != "local"

    def bind(self, note: Callable[[str], None], *, until_quota: bool) -> None:
        """Attach the pool to the run, its meters in this process or shared (Redis)."""
        backend = None
        if self.shared:
            # Redis's own clock orders every worker's reservations; a test's fake clock
            # stays the limiter's clock for waiting.
            backend = open_meter_backend(self.limiter_url)
        self.pool.bind(self.clock, note, stop_when_out_of_quota=until_quota, backend=backend)

    async def start(self) -> None:
        await self.pool.limiter.start()

    async def aclose(self) -> None:
        await self.pool.limiter.aclose()

    async def restore_days(self, io: StoreIO) -> None:
        """Today's spent quota survives restarts: start each daily meter from it (the
        larger of the store's count and the shared meters')."""
        limiter = self.pool.limiter
        for group, start, unit, _ in limiter.day_usage(self.clock.time()):
            spent = await io.call(io.store.day_usage, group, start)
            limiter.restore_day(group, start, unit, spent.get(unit, 0.0))

    def usage(self) -> tuple[list[KeyUsage], list[DayUsage]]:
        """Per key, what changed since the last commit; per group, today's spent quota."""
        pool = self.pool
        now = self.clock.time()
        shown = {row["key"]: row for row in pool.describe(now)}
        usage = []
        for k, r, t, rl, e in pool.usage_since_last():
            row = shown[k.masked]
            info = {"limits": row["limits"], "today": row["today"]}
            until = k.until if k.state in ("cooling", "parked") else None
            if until is not None and math.isinf(until):
                until = None
            usage.append(
                KeyUsage(k.fingerprint, k.masked, r, t, rl, e, k.state, until, k.reason, info)
            )
        return usage, pool.limiter.day_usage(now)

    def describe(self) -> list[dict[str, object]]:
        return self.pool.describe(self.clock.time())

    def close(self) -> None:
        """Wake every request waiting for a slot: it gives its item back."""
        self.pool.limiter.close()

    @property
    def rejections(self) -> int:
        return self.pool.limiter.rejections

    @property
    def waiting(self) -> int:
        return self.pool.limiter.waiting

    @property
    def limited(self) -> bool:
        return self.pool.limited

    def quota_wait(self) -> float | None:
        return self.pool.limiter.quota_wait(self.clock.time())

    def per_minute(self) -> float:
        """Requests per minute the pool allows (``inf`` when nothing limits it)."""
        return capacity(self.pool).per_minute

    def requests(self) -> int:
        return sum(k.requests for k in self.pool.keys)
