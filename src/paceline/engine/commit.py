"""Committing results: the sink first, then the statuses, in batches paced by time and size.

Every ``flush_interval`` seconds (and whenever a batch's worth is waiting) the results so
far go out: their rows to the sink in writes sized to take about the batch's target time,
then every outcome in one store transaction with the key usage, today's quota and the
cost. A crash in between replays rows the sink upserts anyway. When the sink is a table
in the store's own PostgreSQL database, rows and statuses commit in one transaction.

Results waiting are bounded: past :data:`MAX_WAITING`, workers wait for a commit before
taking more, so a kill loses at most about a second of answers and memory stays flat.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from paceline.clock import Clock
from paceline.errors import SinkError
from paceline.item import Status
from paceline.sinks import Sink
from paceline.store import KeyUsage, Outcome, RowWriter

from .attempt import Result
from .budget import Budgets
from .ingest import describe_exception
from .progress import Progress
from .quota import DayUsage, PoolRun
from .state import RunState
from .storeio import StoreIO

__all__ = ["MAX_WAITING", "Committer", "sink_level"]

#: Results waiting for a commit before workers pause; also the most one commit takes.
MAX_WAITING = 5_000
#: How long a flush keeps trying through a lock or a dropped connection before it gives up.
TRANSIENT_FOR = 120.0


def sink_level(exc: BaseException) -> bool:
    """Whether a sink error is about the sink (disk, lock, connection) rather than one
    row's values."""
    if isinstance(exc, OSError):
        return True
    if _connection_error(exc):
        return True  # the connection, not the row (psycopg is an optional extra)
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(w in text for w in ("locked", "busy", "disk", "unable to open", "readonly"))
    return False


def transient(exc: BaseException) -> bool:
    """Errors that pass: a lock held for a while, a dropped database connection."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in text or "busy" in text
    if _connection_error(exc):
        return True
    return type(exc).__name__ == "StoreConnectionError"


def _connection_error(exc: BaseException) -> bool:
    """A psycopg error about the connection: every ``OperationalError`` (``AdminShutdown``
    when the server drops it, a failed connect, …) and ``InterfaceError``; not a row's
    values (``DataError``, ``IntegrityError``, …)."""
    return any(
        c.__module__.startswith("psycopg") and c.__name__ in ("OperationalError", "InterfaceError")
        for c in type(exc).__mro__
    )


class Committer:
    """Buffers attempts' results and commits them."""

    def __init__(
        self,
        sink: Sink,
        io: StoreIO,
        progress: Progress,
        state: RunState,
        clock: Clock,
        worker_id: str,
        budgets: Budgets,
        pool: PoolRun | None,
        redact: Callable[[str], str],
        *,
        batching: Any,
        flush_interval: float,
    ) -> None:
        self.sink = sink
        self.io = io
        self.progress = progress
        self.state = state
        self.clock = clock
        self.worker_id = worker_id
        self.budgets = budgets
        self.pool = pool
        self.redact = redact
        self.batching = batching
        self.flush_interval = flush_interval
        self.writer: RowWriter | None = None  # set when the sink shares the store's database
        self.results: list[Result] = []
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def add(self, result: Result) -> None:
        self.results.append(result)
        if len(self.results) >= self.batching.size:
            self._wake.set()
        if len(self.results) >= MAX_WAITING:
            self._room.clear()
            self._wake.set()

    async def wait_room(self) -> None:
        """Wait while too many results wait for a commit (the store or sink is slow)."""
        if not self._room.is_set():
            await self._room.wait()

    @property
    def waiting(self) -> int:
        return len(self.results)

    async def run(self) -> None:
        """Commit every ``flush_interval`` seconds, or sooner when a batch is ready."""
        while True:
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                # The batch's items stay claimed in the store and are redone next run.
                self.state.fail(exc)
                return

    async def flush(self) -> None:
        async with self.lock:
            while self.results:
                batch, self.results = self.results[:MAX_WAITING], self.results[MAX_WAITING:]
                await self._commit_batch(batch)
            self._room.set()

    async def final(self) -> None:
        """The last commit: what is left, and key usage, quota and cost even with no
        result left (a run stopped by its budget must not forget what it spent)."""
        if not self.io.opened:
            return
        try:
            await self.flush()
            async with self.lock:
                await self._commit_batch([])
        except Exception as exc:
            if self.state.fatal is None:
                self.state.fatal = exc

    async def _commit_batch(self, batch: list[Result]) -> None:
        keys, days = self.pool.usage() if self.pool is not None else ([], [])
        cost = self.budgets.take_unsaved()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TRANSIENT_FOR
        delay = 0.2
        while True:
            try:
                outcomes = await self.io.call(self._commit, batch, keys, days, cost)
                break
            except Exception as exc:
                if not transient(exc) or loop.time() > deadline:
                    raise
                self.progress.note(
                    f"waiting for the store or sink: {describe_exception(exc)}", once=True
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._count(batch, outcomes)

    def _count(self, batch: list[Result], outcomes: list[Outcome]) -> None:
        progress = self.progress
        counted = {o.seq for o in outcomes}
        lost = sum(1 for o, _ in batch if o.seq not in counted)
        progress.move("running", "pending", lost)  # taken over by another worker meanwhile
        for outcome in outcomes:
            progress.move("running", outcome.status.value, 1)
            if outcome.status is Status.DONE:
                progress.done_run += 1
            elif outcome.status is Status.FAILED:
                progress.failed_run += 1
            if outcome.error and outcome.status is not Status.DONE:
                retrying = outcome.status is Status.RETRY
                what = f"attempt {outcome.attempts}, {'will retry' if retrying else 'failed'}"
                progress.error(f"{outcome.item_id} ({what})", outcome.error)
        self.state.progress.set()

    def _commit(
        self,
        batch: list[Result],
        keys: list[KeyUsage],
        days: list[DayUsage],
        cost: float,
    ) -> list[Outcome]:
        """Sink first, then the statuses (or both at once); the outcomes as committed."""
        store = self.io.store
        outcomes = [o for o, _ in batch]
        rows = [row for _, row in batch if row is not None]
        now = self.clock.time()
        if self.writer is not None:
            started = self.clock.monotonic()
            counted = store.complete(
                outcomes, now, worker_id=self.worker_id, rows=rows, writer=self.writer,
                keys=keys, days=days, cost=cost,
            )  # fmt: skip
            if rows:
                self.batching.observe(len(rows), self.clock.monotonic() - started)
            return counted
        state = None
        if rows:
            try:
                state = self._write(rows)
            except Exception as exc:
                if not sink_level(exc):
                    state, outcomes = self._write_rows_alone(batch)
                else:
                    raise self._sink_error(exc) from exc
        return store.complete(
            outcomes, now, worker_id=self.worker_id, sink_state=state, keys=keys, days=days,
            cost=cost,
        )  # fmt: skip

    def _write(self, rows: Sequence[dict[str, Any]]) -> str | None:
        """Rows to the sink in writes of the adaptive batch size."""
        state = None
        start = 0
        while start < len(rows):
            size = self.batching.size
            chunk = rows[start : start + size]
            started = self.clock.monotonic()
            state = self.sink.write(chunk) or state
            self.batching.observe(len(chunk), self.clock.monotonic() - started)
            start += size
        return state

    def _sink_error(self, exc: Exception) -> Exception:
        """A sink-level error as one line naming the sink (a lock or a dropped
        connection stays itself: it is waited out)."""
        if transient(exc):
            return exc
        return SinkError(self.redact(f"{self.sink.describe()}: {describe_exception(exc)}"))

    def _write_rows_alone(self, batch: list[Result]) -> tuple[str | None, list[Outcome]]:
        """A row the sink cannot take fails its item; the rest of the batch goes in."""
        state, outcomes = None, []
        for outcome, row in batch:
            if row is not None:
                try:
                    state = self.sink.write([row]) or state
                except Exception as exc:
                    if sink_level(exc):
                        raise self._sink_error(exc) from exc
                    message = self.redact(f"the sink refused the result: {describe_exception(exc)}")
                    outcome = Outcome(
                        outcome.seq, Status.FAILED, outcome.attempts, message, None,
                        outcome.item_id,
                    )  # fmt: skip
            outcomes.append(outcome)
        return state, outcomes
