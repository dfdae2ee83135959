"""The run loop: a continuous pipeline from the store, through the task, to the sink.

::

    source ──ingest──▶ store ──claim──▶ queue ──▶ N workers ──▶ results ──flush──▶ sink, store
                         ▲                                                              │
                         └────────────── retries wait here with their due time ◀───────┘

A free worker takes the next item at once; nothing waits for a batch to finish. All store
and sink I/O runs on one dedicated thread, in order, so the event loop never blocks on
disk and SQLite sees one writer. Results are committed in batches (every ``flush_size``
results or ``flush_interval`` seconds): the sink first, then the item statuses, so a crash
in between replays rows the sink upserts anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from .client import PoolClient
from .clock import Clock
from .context import Context
from .item import Item, Status
from .keys import NoUsableKey
from .retry import classify
from .sources import IterableSource, Record
from .store import KeyUsage, Outcome, SQLiteStore

if TYPE_CHECKING:
    from .job import Job

__all__ = ["Engine", "RunResult", "Snapshot"]

T = TypeVar("T")

INGEST_CHUNK = 2_000
HEARTBEAT_EVERY = 1.0
STALE_AFTER = 15.0


@dataclass(slots=True)
class Snapshot:
    """What the reporter shows: counts, rates and recent errors, at one moment."""

    job: str
    total: int
    done: int
    failed: int
    pending: int
    running: int
    retrying: int
    source_done: bool
    elapsed: float
    rate_now: float
    rate_avg: float
    rate_peak: float
    eta: float | None
    done_this_run: int
    failed_this_run: int
    errors: list[tuple[str, str]]
    keys: list[dict[str, Any]]
    duplicates: int
    stopping: str | None


@dataclass(slots=True)
class RunResult:
    """How a run ended. ``exit_code`` follows the CLI's: 0, 1 (failures), 130 (stopped)."""

    snapshot: Snapshot
    interrupted: bool
    stop_reason: str | None
    store: Path
    sink: str
    exit_code: int = field(init=False)

    def __post_init__(self) -> None:
        if self.interrupted:
            self.exit_code = 130
        elif self.snapshot.failed:
            self.exit_code = 1
        else:
            self.exit_code = 0


class _Rates:
    """Throughput now (over the last few seconds), on average, and at its peak."""

    def __init__(self, clock: Clock, window: float = 5.0) -> None:
        self.clock = clock
        self.window = window
        self.start = clock.monotonic()
        self.samples: deque[tuple[float, int]] = deque([(self.start, 0)])
        self.peak = 0.0

    def sample(self, count: int) -> tuple[float, float, float]:
        now = self.clock.monotonic()
        self.samples.append((now, count))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        rate_now = (count - c0) / (now - t0) if now - t0 >= 0.5 else 0.0
        elapsed = now - self.start
        rate_avg = count / elapsed if elapsed > 0 else 0.0
        if now - self.start >= 1.0:
            self.peak = max(self.peak, rate_now)
        return rate_now, rate_avg, self.peak


class Engine:
    """One run of a job against one store. Use :meth:`Job.run` rather than this directly."""

    def __init__(
        self,
        job: Job,
        store_path: Path,
        *,
        concurrency: int,
        max_items: int | None,
        grace: float,
        clock: Clock,
        flush_size: int = 1_000,
        flush_interval: float = 0.2,
    ) -> None:
        if job.task_fn is None:
            from .errors import ConfigError

            raise ConfigError(f"job {job.name!r} has no task: decorate a function with @job.task")
        self.job = job
        self.store_path = store_path
        self.concurrency = max(1, concurrency)
        self.max_items = max_items
        self.grace = grace
        self.clock = clock
        self.flush_size = flush_size
        self.flush_interval = flush_interval
        self.run_id = uuid.uuid4().hex
        self.rng = random.Random()
        self.redact: Callable[[str], str] = job.keys.redact if job.keys else (lambda s: s)

        self._io = ThreadPoolExecutor(1, thread_name_prefix="paceline-store")
        self._threads: ThreadPoolExecutor | None = None
        self._store: SQLiteStore | None = None
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._results: list[tuple[Outcome, dict[str, Any] | None]] = []
        self._flush_lock = asyncio.Lock()
        self._flush_now = asyncio.Event()
        self._progress = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._stopping: str | None = None
        self._in_flight = 0
        self._taken = 0
        self._counts: dict[str, int] = {}
        self._source_done = False
        self._duplicates = 0
        self._done_run = 0
        self._failed_run = 0
        self._errors: deque[tuple[str, str]] = deque(maxlen=5)
        self._rates = _Rates(clock)
        self._rate = (0.0, 0.0, 0.0)
        self._fatal: BaseException | None = None
        self._is_async = inspect.iscoroutinefunction(job.task_fn)
        # Items kept claimed ahead of the workers: enough to never starve them, few
        # enough that a stop hands little back and a priority change shows soon.
        self._target = max(2 * self.concurrency, min(512, 8 * self.concurrency))
        self._low_water = self._target // 2

    # -- plumbing ----------------------------------------------------------------------

    async def _io_call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args))

    @property
    def store(self) -> SQLiteStore:
        assert self._store is not None
        return self._store

    def stop(self, reason: str = "interrupted") -> None:
        """Ask the run to stop: take no new items, let those in flight finish."""
        if self._stopping is None:
            self._stopping = reason
            self._progress.set()
        else:
            self._hard_stop.set()

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> RunResult:
        job = self.job
        self._store = await self._io_call(SQLiteStore, self.store_path)
        workers: list[asyncio.Task[None]] = []
        helpers: list[asyncio.Task[None]] = []
        sink = job.sink
        client = httpx.AsyncClient(
            timeout=job.http_timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.concurrency),
        )
        try:
            await self._io_call(self._open, sink)
            if not self._is_async:
                self._threads = ThreadPoolExecutor(self.concurrency, "paceline-task")
            http = PoolClient(client, job.keys, self.clock)
            workers = [asyncio.create_task(self._worker(http)) for _ in range(self.concurrency)]
            helpers = [
                asyncio.create_task(self._ingest()),
                asyncio.create_task(self._flusher()),
                asyncio.create_task(self._heartbeat()),
            ]
            await self._feed()
            await self._shut_down(workers)
        finally:
            for task in [*workers, *helpers]:
                task.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            try:
                await self._final_flush()
            finally:
                await client.aclose()
                if self._threads is not None:
                    self._threads.shutdown(wait=False, cancel_futures=True)
                await self._io_call(self._close, sink)
                self._io.shutdown(wait=True)
        if self._fatal is not None:
            raise self._fatal
        interrupted = self._stopping is not None and self._stopping != "max-items"
        return RunResult(
            self.snapshot(), interrupted, self._stopping, self.store_path, sink.describe()
        )

    def _open(self, sink: Any) -> None:
        store = self.store
        store.bind_job(self.job.name)
        store.acquire_run(self.run_id, self.clock.time(), STALE_AFTER)
        store.recover()
        store.set_sink_state(sink.open(store.sink_state()))
        self._counts = store.counts()
        self._duplicates = store.duplicates(0)[0]
        self._source_done = store.source_position()[1]

    def _close(self, sink: Any) -> None:
        if self._store is None:
            return
        try:
            self.store.release_lease(self.run_id)
            state = "stopped" if self._stopping else "finished"
            if self._fatal is not None:
                state = "failed"
            self.store.finish_run(self.run_id, self.clock.time(), state, self._stats())
        finally:
            sink.close()
            self.store.close()

    async def _feed(self) -> None:
        """Keep the queue stocked from the store until the work is done or a stop."""
        target = self._target
        while self._stopping is None:
            if self.max_items is not None and self._taken >= self.max_items:
                self._stopping = "max-items"
                break
            room = target - self._queue.qsize()
            if room < self._low_water:
                await self._wait_progress(0.5)
                continue
            if self.max_items is not None:
                room = min(room, self.max_items - self._taken)
            items = await self._io_call(self.store.claim, room, self.run_id)
            if items:
                self._taken += len(items)
                self._move("pending", "running", len(items))
                for item in items:
                    self._queue.put_nowait(item)
                continue
            if not self._source_done:
                await self._wait_progress(0.2)
                continue
            if await self._io_call(self.store.promote_due, self.clock.time()):
                self._counts = await self._io_call(self.store.counts)
                continue
            if self._in_flight or self._queue.qsize() or self._results:
                await self._wait_progress(0.5)
                continue
            due = await self._io_call(self.store.next_due)
            if due is None:
                return  # nothing pending, nothing waiting, nothing in flight: finished
            await self._wait_progress(max(0.0, min(due - self.clock.time(), 1.0)))

    async def _wait_progress(self, timeout: float) -> None:
        """Wait for a worker, the flusher or the source to move, or ``timeout`` clock-seconds.

        The time goes through the job's clock, so a test moving a fake clock past a
        retry's due time wakes the run at once.
        """
        self._progress.clear()
        waiters = [
            asyncio.ensure_future(self._progress.wait()),
            asyncio.ensure_future(self.clock.sleep(timeout)),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _shut_down(self, workers: list[asyncio.Task[None]]) -> None:
        if self._stopping not in (None, "max-items"):
            # Items claimed but not started go back to the store untouched (on close).
            while not self._queue.empty():
                self._queue.get_nowait()
        for _ in workers:
            self._queue.put_nowait(None)
        if self._stopping in (None, "max-items"):
            await asyncio.gather(*workers)
            return
        # A graceful stop lets the attempts in flight finish, up to the grace period; a
        # second signal (or a fatal error) ends the wait at once.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        hard = asyncio.create_task(self._hard_stop.wait())
        remaining: set[asyncio.Task[Any]] = set(workers)
        try:
            while remaining and not hard.done() and loop.time() < deadline:
                done, _ = await asyncio.wait(
                    [*remaining, hard],
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                remaining -= done
        finally:
            hard.cancel()

    # -- workers -----------------------------------------------------------------------

    async def _worker(self, http: PoolClient) -> None:
        queue = self._queue
        while True:
            item = await queue.get()
            if item is None:
                return
            if queue.qsize() < self._low_water:
                self._progress.set()
            self._in_flight += 1
            try:
                result = await self._attempt(item, http)
            finally:
                self._in_flight -= 1
            if result is None:
                return
            self._results.append(result)
            if len(self._results) >= self.flush_size:
                self._flush_now.set()
            if not self._in_flight:
                self._progress.set()

    async def _attempt(
        self, item: Item, http: PoolClient
    ) -> tuple[Outcome, dict[str, Any] | None] | None:
        """Run the task once; ``None`` when the run cannot go on (no usable key)."""
        job = self.job
        fn = job.task_fn
        assert fn is not None
        attempts = item.attempts + 1
        ctx = Context(http, job.name, attempts, self.clock)
        try:
            if self._is_async:
                call = cast(Awaitable[dict[str, Any] | None], fn(item, ctx))
                result = await (asyncio.wait_for(call, job.timeout) if job.timeout else call)
            else:
                loop = asyncio.get_running_loop()
                sync_fn = cast(Callable[[Item, Context], dict[str, Any] | None], fn)
                result = await loop.run_in_executor(self._threads, sync_fn, item, ctx)
        except asyncio.CancelledError:
            raise
        except NoUsableKey as exc:
            self._fatal_stop(exc)
            return None
        except Exception as exc:
            now = self.clock.time()
            failure = classify(exc, now, job.retry_on)
            message = self.redact(failure.message)
            if failure.retryable and attempts <= job.retries:
                delay = failure.retry_after
                if delay is None:
                    delay = job.backoff.delay(attempts, self.rng)
                due = now + delay
                return Outcome(item.seq, Status.RETRY, attempts, message, due, item.id), None
            return Outcome(item.seq, Status.FAILED, attempts, message, None, item.id), None
        if result is None:
            return Outcome(item.seq, Status.DONE, attempts), None
        if not isinstance(result, dict):
            message = f"task returned {type(result).__name__}, expected a dict or None"
            return Outcome(item.seq, Status.FAILED, attempts, message, None, item.id), None
        row = dict(result)
        row["id"] = item.id
        return Outcome(item.seq, Status.DONE, attempts), row

    def _fatal_stop(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._stopping = self._stopping or "no usable key"
        self._hard_stop.set()
        self._progress.set()

    # -- ingest, flush, heartbeat ------------------------------------------------------

    async def _ingest(self) -> None:
        """Read the source into the store in chunks, committing the position with each."""
        position, exhausted = await self._io_call(self.store.source_position)
        if exhausted and isinstance(self.job.source, IterableSource):
            return  # an iterable may not be readable twice; it was read to its end
        try:
            records = self.job.source.read(position)
            while self._stopping is None:
                done = await self._io_call(self._ingest_chunk, records)
                self._progress.set()
                if done:
                    self._source_done = True
                    return
        except Exception as exc:
            self._fatal_stop(exc)

    def _ingest_chunk(self, records: Iterator[Record]) -> bool:
        chunk: list[Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= INGEST_CHUNK:
                break
        exhausted = len(chunk) < INGEST_CHUNK
        if not chunk:
            if exhausted:
                store = self.store
                position, _ = store.source_position()
                store.ingest([], position, True, self.clock.time())
            return exhausted
        result = self.store.ingest(chunk, chunk[-1].after, exhausted, self.clock.time())
        self._counts["pending"] = self._counts.get("pending", 0) + result.inserted
        self._counts["failed"] = self._counts.get("failed", 0) + result.invalid
        self._duplicates += result.duplicates
        for record in chunk:
            if record.error is not None:
                self._errors.append((f"line {record.line}", record.error))
        return exhausted

    async def _flusher(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self._flush_now.wait()
            except TimeoutError:
                pass
            self._flush_now.clear()
            try:
                await self._flush()
            except Exception as exc:
                # The batch's items stay claimed in the store and are redone next run.
                self._fatal_stop(exc)
                return

    async def _flush(self) -> None:
        async with self._flush_lock:
            if not self._results:
                return
            batch, self._results = self._results, []
            keys = self._key_usage()
            await self._io_call(self._commit, batch, keys)
            for outcome, _ in batch:
                status = outcome.status.value
                self._move("running", status, 1)
                if outcome.status is Status.DONE:
                    self._done_run += 1
                elif outcome.status is Status.FAILED:
                    self._failed_run += 1
                if outcome.error and outcome.status is not Status.DONE:
                    retrying = outcome.status is Status.RETRY
                    what = f"attempt {outcome.attempts}, {'will retry' if retrying else 'failed'}"
                    self._errors.append((f"{outcome.item_id} ({what})", outcome.error))
            self._progress.set()

    def _commit(
        self, batch: list[tuple[Outcome, dict[str, Any] | None]], keys: list[KeyUsage]
    ) -> None:
        rows = [row for _, row in batch if row is not None]
        state = self.job.sink.write(rows) if rows else None
        self.store.complete([o for o, _ in batch], self.clock.time(), sink_state=state, keys=keys)

    async def _final_flush(self) -> None:
        if self._store is None:
            return
        try:
            await self._flush()
        except Exception as exc:
            if self._fatal is None:
                self._fatal = exc

    def _key_usage(self) -> list[KeyUsage]:
        pool = self.job.keys
        if pool is None:
            return []
        return [
            KeyUsage(k.fingerprint, k.masked, r, t, rl, e, k.state)
            for k, r, t, rl, e in pool.usage_since_last()
        ]

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            # A missed heartbeat (store busy) is simply retried a second later.
            with contextlib.suppress(Exception):
                await self._io_call(
                    self.store.heartbeat, self.run_id, self.clock.time(), self._stats()
                )

    # -- numbers -----------------------------------------------------------------------

    def _move(self, src: str, dst: str, n: int) -> None:
        self._counts[src] = self._counts.get(src, 0) - n
        self._counts[dst] = self._counts.get(dst, 0) + n

    def _stats(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            "pid": os.getpid(),
            "in_flight": snap.running,
            "claimed": self._counts.get("running", 0),
            "rate_now": round(snap.rate_now, 2),
            "rate_avg": round(snap.rate_avg, 2),
            "rate_peak": round(snap.rate_peak, 2),
            "eta_seconds": None if snap.eta is None else round(snap.eta, 1),
            "elapsed": round(snap.elapsed, 1),
            "stopping": snap.stopping,
        }

    def snapshot(self) -> Snapshot:
        """The run's numbers now (cheap: no I/O)."""
        c = self._counts
        done, failed = c.get("done", 0), c.get("failed", 0)
        retrying = c.get("retry", 0)
        running = self._in_flight
        pending = c.get("pending", 0) + retrying + c.get("running", 0) - running
        rate_now, rate_avg, rate_peak = self._rates.sample(self._done_run + self._failed_run)
        self._rate = (rate_now, rate_avg, rate_peak)
        remaining = pending + running
        rate = rate_now or rate_avg
        eta = remaining / rate if rate > 0 and self._source_done else None
        if remaining == 0 and self._source_done:
            eta = 0.0
        keys = []
        if self.job.keys is not None:
            keys = [
                {
                    "key": k.masked,
                    "requests": k.requests,
                    "tokens": k.tokens,
                    "rate_limited": k.rate_limited,
                    "state": k.state,
                }
                for k in self.job.keys.keys
            ]
        return Snapshot(
            job=self.job.name,
            total=done + failed + pending + running,
            done=done,
            failed=failed,
            pending=pending,
            running=running,
            retrying=retrying,
            source_done=self._source_done,
            elapsed=self.clock.monotonic() - self._rates.start,
            rate_now=rate_now,
            rate_avg=rate_avg,
            rate_peak=rate_peak,
            eta=eta,
            done_this_run=self._done_run,
            failed_this_run=self._failed_run,
            errors=list(self._errors),
            keys=keys,
            duplicates=self._duplicates,
            stopping=self._stopping,
        )
