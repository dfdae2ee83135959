"""Automatic concurrency: grow workers until the keys are the bound.

Every half second: if every request was admitted at once, (nearly) every worker is busy,
no 429 came back and items are waiting, the keys have room the workers cannot fill: grow
by half, up to what Little's law says is useful. The keys' limits need not be known for
that: a pool that starts without any grows while no 429 comes back, and once the answers
have taught its limits, Little's law bounds it (a fixed window with something left bounds
nothing: it is spent as fast as the job can). 429s mean the provider is the bound already:
shrink by a quarter. Many workers only waiting for slots: hand a tenth back (not while
every key waits for a reset: the workers will be wanted when it comes). An event loop
that wakes late means this process's CPU is the bound: grow no more.
"""

from __future__ import annotations

import math

from paceline.clock import Clock
from paceline.plan import pace

from .attempt import Attempts
from .dispatch import Dispatcher
from .progress import Progress
from .quota import PoolRun
from .state import RunState

__all__ = ["AUTO_START", "Autoscaler"]

AUTO_START = 8
AUTOSCALE_EVERY = 0.5
#: The event loop this late (seconds) means the CPU is the bound: grow no more (four
#: times as late: hand a tenth back).
SATURATED = 0.1


class Autoscaler:
    """Sizes the dispatcher's workers to the key pool."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        pool: PoolRun,
        attempts: Attempts,
        progress: Progress,
        state: RunState,
        clock: Clock,
        max_concurrency: int,
    ) -> None:
        self.dispatcher = dispatcher
        self.pool = pool
        self.attempts = attempts
        self.progress = progress
        self.state = state
        self.clock = clock
        self.max_concurrency = max_concurrency

    async def run(self) -> None:
        d, pool = self.dispatcher, self.pool
        crowded, rejected = 0, pool.rejections
        while self.state.taking:
            before = self.clock.monotonic()
            await self.clock.sleep(AUTOSCALE_EVERY)
            # The event loop late to wake us: this process's CPU is the bound, not the keys.
            lag = self.clock.monotonic() - before - AUTOSCALE_EVERY
            workers = d.size
            new_rejections, rejected = pool.rejections - rejected, pool.rejections
            if new_rejections and workers > AUTO_START:
                self._shrink(workers, max(1, workers // 4))
                crowded = 0
            elif lag > SATURATED:
                if lag > 4 * SATURATED and workers > AUTO_START:
                    self._shrink(workers, max(1, workers // 10))
                crowded = 0
            elif (
                not new_rejections
                and pool.waiting == 0
                and d.in_flight >= 0.9 * workers
                and d.queue.qsize()
            ):
                ceiling = min(self.max_concurrency, self.useful_workers())
                d.spawn(max(0, min(max(2, workers // 2), ceiling - workers)))
                crowded = 0
            elif pool.waiting > max(4, workers // 2) and pace(pool.pool, self.clock.time()):
                # (Every key spent until a reset: the workers are kept for it.)
                crowded += 1
                if crowded >= 8 and workers > AUTO_START:
                    self._shrink(workers, max(1, workers // 10))
                    crowded = 0
            else:
                crowded = 0

    def useful_workers(self) -> int:
        """Little's law: items in flight = item rate the keys allow × time per item.

        Half again as many, for the spread of latencies; no bound while the keys' pace is
        unknown or unbounded (limits not learned yet, a fixed window with room left): then
        429s and waits are the signal.
        """
        per_minute = pace(self.pool.pool, self.clock.time())
        finished = self.progress.done_run + self.progress.failed_run
        seconds = self.attempts.seconds
        if math.isinf(per_minute) or not finished or seconds <= 0:
            return self.max_concurrency
        per_item = max(1.0, self.pool.requests() / finished)
        return math.ceil(per_minute / 60 / per_item * seconds * 1.5) + 2

    def _shrink(self, workers: int, by: int) -> None:
        self.dispatcher.shrink(min(by, workers - AUTO_START))
