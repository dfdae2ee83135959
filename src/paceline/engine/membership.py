"""A worker's membership of its job: registering, the heartbeat, and leaving.

The heartbeat runs on a store connection and thread of its own, so a long commit never
makes a live worker look dead. Each beat records the worker's numbers (what ``status``
shows), brings back ``paceline stop`` requests, and, on a shared store, the job-wide
counts, cost and source state, the other workers, and every few beats puts back the items
of workers whose heartbeat stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from paceline.clock import Clock
from paceline.store import WorkerInfo

from .budget import Budgets
from .progress import Progress
from .state import RunState
from .storeio import StoreIO

__all__ = ["HEARTBEAT_EVERY", "STALE_AFTER", "Membership"]

HEARTBEAT_EVERY = 1.0
#: A worker whose heartbeat stopped this long ago is gone: its items are taken over.
STALE_AFTER = 15.0
#: Beats between two looks for items of workers that are gone.
RECOVER_EVERY = 5


class Membership:
    """Registers the worker and keeps it alive in the store."""

    def __init__(
        self,
        target: str | os.PathLike[str],
        job: str,
        worker_id: str,
        clock: Clock,
        state: RunState,
        progress: Progress,
        budgets: Budgets,
        stats: Callable[[], dict[str, Any]],
        *,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.io = StoreIO(target, job, name="paceline-heartbeat")
        self.worker_id = worker_id
        self.clock = clock
        self.state = state
        self.progress = progress
        self.budgets = budgets
        self.stats = stats
        self.stale_after = stale_after
        self.info: WorkerInfo | None = None
        self.peers: list[WorkerInfo] = []
        self.shared = False

    async def join(self) -> WorkerInfo:
        """Open the heartbeat's connection and register; refuses (``JobAlreadyRunning``)
        where the store holds one worker and another lives."""
        store = await self.io.open()
        self.shared = store.shared
        now = self.clock.time()
        self.info = await self.io.call(store.register_worker, self.worker_id, now, self.stale_after)
        await self.io.call(store.recover, now, self.stale_after)
        self.peers = await self.io.call(store.workers, now)
        return self.info

    async def beat_forever(self) -> None:
        beats = 0
        while True:
            await self.clock.sleep(HEARTBEAT_EVERY)
            beats += 1
            try:
                await self.beat(recover=beats % RECOVER_EVERY == 0)
            except Exception:
                continue  # a missed heartbeat (store busy) is simply retried a second later

    async def beat(self, *, recover: bool = False) -> None:
        store, io = self.io.store, self.io
        now = self.clock.time()
        control = await io.call(store.heartbeat, self.worker_id, now, self.stats())
        if control.stop_requested and self.state.taking:
            self.progress.note("paceline stop: finishing the items in flight")
            self.state.stop("stop requested")
        if not self.shared:
            return
        self.peers = await io.call(store.workers, now)
        self.progress.counts = await io.call(store.counts)
        self.budgets.refresh(await io.call(store.cost))
        if not self.progress.source_done:
            self.progress.source_done = (await io.call(store.source_position))[1]
        if recover:
            moved = await io.call(store.recover, now, self.stale_after)
            if moved:
                self.progress.note(f"took over {moved:,} item(s) of a worker that stopped")
                self.state.progress.set()

    async def leave(self, state: str) -> None:
        if self.info is not None and self.io.opened:
            store = self.io.store
            await self.io.call(
                store.finish_worker, self.worker_id, self.clock.time(), state, self.stats()
            )
        await self.io.close()
