"""The key pool's side of a run: binding the limiter, and what goes to the store.

Each commit carries, per key, what changed since the last one (requests, tokens, 429s,
errors, state) and, per key group, today's spent quota, so a restart knows both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from paceline.clock import Clock
from paceline.keys import KeyPool
from paceline.plan import capacity
from paceline.store import KeyUsage, Store

__all__ = ["DayUsage", "PoolRun"]

#: (group fingerprint, day window start, unit, used)
DayUsage = tuple[str, float, str, float]


class PoolRun:
    """A key pool bound to one run."""

    def __init__(self, pool: KeyPool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    def bind(self, note: Callable[[str], None], *, until_quota: bool) -> None:
        self.pool.bind(self.clock, note, stop_when_out_of_quota=until_quota)

    def restore_days(self, store: Store) -> None:
        """Today's spent quota survives restarts: start each daily meter from it."""
        now = self.clock.time()
        for key, group in self.pool.groups():
            for meter in group.day:
                meter.used(now)  # rolls the window to today
                spent = store.day_usage(key.fingerprint, meter.window_start)
                meter.restore(spent.get(meter.limit.unit, 0.0), now)

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
        days = [
            (key.fingerprint, meter.window_start, str(meter.limit.unit), meter.used(now))
            for key, group in pool.groups()
            for meter in group.day
        ]
        return usage, days

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
