"""Dispatching: claimed items to free workers, one at a time, as soon as one is free.

The feeder keeps a small queue stocked from the store (due retries rejoin the line first);
workers take the next item the moment they finish one, so nothing waits for a batch.
Expedited items (``paceline expedite``) are looked for twice a second and go first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from paceline.clock import Clock
from paceline.item import Item

from .attempt import Attempts
from .budget import Budgets
from .circuit import Circuit
from .commit import Committer
from .progress import Progress
from .refill import Refiller
from .state import RunState
from .storeio import StoreIO

__all__ = ["EXPEDITE_EVERY", "Dispatcher"]

EXPEDITE_EVERY = 0.5
#: The most items claimed ahead of the workers.
MAX_AHEAD = 2_000


class Dispatcher:
    """The queue of claimed items and the workers that run them."""

    def __init__(
        self,
        io: StoreIO,
        progress: Progress,
        state: RunState,
        clock: Clock,
        worker_id: str,
        budgets: Budgets,
        attempts: Attempts,
        committer: Committer,
        circuit: Circuit,
        refiller: Refiller,
    ) -> None:
        self.io = io
        self.progress = progress
        self.state = state
        self.clock = clock
        self.worker_id = worker_id
        self.budgets = budgets
        self.attempts = attempts
        self.committer = committer
        self.circuit = circuit
        self.refiller = refiller
        self.spares = 0  # workers added while others are stuck on slow attempts
        self.queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self.urgent: deque[Item] = deque()  # expedited items, taken before the queue
        self.workers: set[asyncio.Task[None]] = set()
        self.retiring = 0
        self.closing = False  # shutting down: no worker is added (each would take an end mark)
        self.in_flight = 0
        self.held = 0  # items workers took and wait to start (while the provider is down)
        self._next_promote = 0.0
        self.target = self.low_water = 0

    # -- workers -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Workers now (those retiring after their current item not counted)."""
        return len(self.workers) - self.retiring

    def _set_target(self, workers: int) -> None:
        # Items kept claimed ahead of the workers: enough to never starve them, few
        # enough that a stop hands little back and a priority change shows soon; for
        # fast tasks, half a second's worth (fewer, larger claims).
        by_rate = min(MAX_AHEAD, int(self.progress.rates.now * 0.5))
        self.target = max(2 * workers, min(512, 8 * workers), by_rate)
        self.low_water = self.target // 2

    def spawn(self, n: int) -> None:
        if self.closing:
            return
        for _ in range(n):
            task = asyncio.create_task(self._work())
            self.workers.add(task)
            task.add_done_callback(self.workers.discard)
        self._set_target(self.size)

    def shrink(self, by: int) -> None:
        """``by`` workers leave after their current item."""
        if by > 0:
            self.retiring += by
            self._set_target(self.size)

    async def _work(self) -> None:
        queue = self.queue
        while True:
            item = self.urgent.popleft() if self.urgent else await queue.get()
            if item is None:
                return
            if queue.qsize() < self.low_water:
                self.state.progress.set()
            self.held += 1  # taken, not yet started: the run is not over while any is
            try:
                await self.circuit.admit()  # while the provider fails for all: wait, or probe
            finally:
                self.held -= 1
            if self.state.interrupt.is_set():
                return  # stopping: the item stays claimed and is handed back on close
            self.in_flight += 1
            try:
                result = await self.attempts.run(item)
            finally:
                self.in_flight -= 1
            if result is None:
                return  # the item stays claimed and is handed back when the run closes
            self.committer.add(result)
            if not self.in_flight:
                self.state.progress.set()
            if self.retiring > 0:
                self.retiring -= 1
                return
            await self.committer.wait_room()

    async def replace_stuck_forever(self) -> None:
        """Twice a second: cut attempts past their timeout; and since workers stuck on
        attempts far slower than the rest do not count as capacity, add a spare for each,
        letting the spares go once the stuck ones are done."""
        base = self.size
        while True:
            await self.clock.sleep(0.5)
            self._set_target(self.size)
            stuck = self.attempts.retime()
            wanted = min(stuck, max(1, base))
            if wanted > self.spares:
                self.spawn(wanted - self.spares)
                self.spares = wanted
            elif wanted < self.spares:
                self.shrink(self.spares - wanted)
                self.spares = wanted
            if not self.spares:
                base = self.size

    # -- feeding -----------------------------------------------------------------------

    async def feed(self) -> None:
        """Keep the queue stocked from the store until the work is done or a stop."""
        io, store, state = self.io, self.io.store, self.state
        while state.taking:
            room = self.target - self.queue.qsize()
            if room < self.low_water:
                await self.wait_progress(0.5)
                continue
            now = self.clock.time()
            if now >= self._next_promote:
                # Due retries rejoin the line now, not only once the backlog is empty.
                self._next_promote = now + 1.0
                self.progress.move("retry", "pending", await io.call(store.promote_due, now))
            caps = self.budgets.caps()
            # Read before claiming: the source is done only if its last chunk was in the
            # store when the claim looked (ingest may finish while the claim runs).
            source_done = self.progress.source_done
            items = await io.call(store.claim, room, self.worker_id, now, caps)
            if items:
                await self._enqueue(items)
                continue
            if caps:
                reason = await io.call(self.budgets.spent, store)
                if reason is not None:
                    state.finish_soft(reason)
                    break
            if not source_done:
                await self.wait_progress(0.2)
                continue
            promoted = await io.call(store.promote_due, self.clock.time())
            if promoted:
                self.progress.move("retry", "pending", promoted)
                continue
            if self.in_flight or self.held or self.queue.qsize() or self.committer.waiting:
                await self.wait_progress(0.5)
                continue
            due = await io.call(store.next_due)
            if due is None:
                if store.shared and await self._others_busy():
                    await self.wait_progress(1.0)
                    continue
                return  # nothing pending, nothing waiting, nothing in flight: finished
            await self.wait_progress(max(0.0, min(due - self.clock.time(), 1.0)))

    async def _others_busy(self) -> bool:
        """Whether other workers still hold items (theirs may come back as retries, or be
        taken over if their worker died)."""
        counts = await self.io.call(self.io.store.counts)
        return bool(counts.get("running", 0) or counts.get("pending", 0))

    async def _ready(self, items: list[Item]) -> list[Item]:
        """Claimed items, their records completed from the source where the store has not
        all of them; those that cannot be read again end failed at once."""
        self.progress.move("pending", "running", len(items))
        if not self.refiller.needed(items):
            return items
        items, failed = await self.refiller.complete(items)
        for result in failed:
            self.committer.add(result)
        return items

    def hunger(self) -> tuple[int, list[tuple[str, int]]]:
        """How many items the workers want now, and the budgets a claim counts against
        (for the ingest, which can claim what it inserts)."""
        if not self.state.taking:
            return 0, []
        return max(0, self.target - self.queue.qsize()), self.budgets.caps()

    async def deliver(self, items: list[Item]) -> None:
        """Items claimed by the ingest as it inserted them."""
        await self._enqueue(items)

    async def _enqueue(self, items: list[Item]) -> None:
        for item in await self._ready(items):
            self.queue.put_nowait(item)

    async def wait_progress(self, timeout: float) -> None:
        """Wait for a worker, the committer or the source to move, or ``timeout``
        clock-seconds (a test moving a fake clock past a retry's due time wakes the run)."""
        self.state.progress.clear()
        waiters = [
            asyncio.ensure_future(self.state.progress.wait()),
            asyncio.ensure_future(self.clock.sleep(timeout)),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def expedite_forever(self) -> None:
        """Every half second, put expedited items (``paceline expedite``) first in line."""
        io, store = self.io, self.io.store
        while self.state.taking:
            await self.clock.sleep(EXPEDITE_EVERY)
            items = await io.call(
                store.claim_expedited, self.worker_id, self.clock.time(), self.budgets.caps()
            )
            for item in await self._ready(items):
                if self.queue.empty():
                    self.queue.put_nowait(item)  # workers wait on the queue: wake one
                else:
                    self.urgent.append(item)

    # -- ending ------------------------------------------------------------------------

    async def shut_down(self, grace: float) -> None:
        """Let the workers end: after the queue when the work is done (or a budget is
        reached); after their attempt in flight, within ``grace``, on a stop; at once on
        a second signal or a fatal error."""
        loop = asyncio.get_running_loop()
        state = self.state
        self.closing = True
        hard = asyncio.create_task(state.hard_stop.wait())
        interrupt = asyncio.create_task(state.interrupt.wait())
        remaining: set[asyncio.Task[Any]] = set(self.workers)
        deadline: float | None = None
        for _ in remaining:
            self.queue.put_nowait(None)
        try:
            while remaining and not hard.done():
                if deadline is None and state.interrupt.is_set():
                    # Items claimed but not started go back to the store (on close).
                    self.urgent.clear()
                    while not self.queue.empty():
                        self.queue.get_nowait()
                    for _ in remaining:
                        self.queue.put_nowait(None)
                    deadline = loop.time() + grace
                timeout = None if deadline is None else deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    break
                done, _ = await asyncio.wait(
                    [*remaining, hard, interrupt], timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                remaining -= done
        finally:
            hard.cancel()
            interrupt.cancel()
