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
import datetime as dt
import functools
import inspect
import itertools
import math
import multiprocessing
import os
import random
import sqlite3
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from .client import PoolClient
from .clock import Clock
from .context import Context
from .cost import Price, Usage
from .errors import ConfigError
from .item import Item, Status
from .keys import NoUsableKey
from .limiter import QuotaWait, Stopping
from .limits import day_start
from .plan import capacity
from .retry import classify
from .sources import IterableSource, Position, Record
from .store import IngestResult, KeyUsage, Outcome, Store, describe_target, open_store

if TYPE_CHECKING:
    from .job import Job

__all__ = ["Engine", "RunResult", "Snapshot"]

T = TypeVar("T")

INGEST_CHUNK = 2_000
AUTO_START = 8
LOCAL_TZ = dt.datetime.now().astimezone().tzinfo or dt.UTC
FIXED_DEFAULT = 16  # workers when there is no key pool to size them by
AUTOSCALE_EVERY = 0.5
EXPEDITE_EVERY = 0.5
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
    skipped: int
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
    notes: list[str] = field(default_factory=list)
    notes_total: int = 0
    quota_until: float | None = None
    workers: int = 0
    batch_size: int = 0
    cost_total: float = 0.0
    cost_per_item: float | None = None
    cost_per_minute: float | None = None


@dataclass(slots=True)
class RunResult:
    """How a run ended. ``exit_code`` follows the CLI's: 0, 1 (failures), 130 (stopped)."""

    snapshot: Snapshot
    interrupted: bool
    stop_reason: str | None
    store: str
    sink: str
    exit_code: int = field(init=False)

    def __post_init__(self) -> None:
        if self.stop_reason == "no usable key":
            self.exit_code = 2
        elif self.interrupted:
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
        self.peak = max(self.peak, rate_avg)
        return rate_now, rate_avg, self.peak


class Engine:
    """One run of a job against one store. Use :meth:`Job.run` rather than this directly."""

    def __init__(
        self,
        job: Job,
        store_target: str | os.PathLike[str],
        *,
        concurrency: int | None,
        max_items: int | None,
        grace: float,
        clock: Clock,
        until_quota: bool = False,
        per_day: int | None = None,
        budget: float | None = None,
        flush_interval: float = 0.2,
    ) -> None:
        if job.task_fn is None:
            raise ConfigError(f"job {job.name!r} has no task: decorate a function with @job.task")
        self.job = job
        self.store_target = store_target
        # None: automatic. Workers grow while the key pool's limiter admits every request
        # at once (the keys are not yet the bound) and shrink when many wait for a slot.
        self.auto = concurrency is None and job.keys is not None
        self.concurrency = max(1, concurrency or (AUTO_START if self.auto else FIXED_DEFAULT))
        self.max_concurrency = max(self.concurrency, job.max_concurrency if self.auto else 0)
        self.max_items = max_items
        self.grace = grace
        self.until_quota = until_quota
        self.per_day = per_day
        self.budget = budget
        if budget is not None and not job.prices:
            raise ConfigError("--budget needs prices: Job(prices={model: Price(...)})")
        self.clock = clock
        self.batching = job.batch.start()
        self.flush_interval = flush_interval
        self.run_id = uuid.uuid4().hex
        self.rng = random.Random()
        self.redact: Callable[[str], str] = job.keys.redact if job.keys else (lambda s: s)

        self._io = ThreadPoolExecutor(1, thread_name_prefix="paceline-store")
        self._threads: ThreadPoolExecutor | None = None
        self._processes: ProcessPoolExecutor | None = None
        self._store: Store | None = None
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._results: list[tuple[Outcome, dict[str, Any] | None]] = []
        self._flush_lock = asyncio.Lock()
        self._flush_now = asyncio.Event()
        self._progress = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._stopping: str | None = None
        self._in_flight = 0
        self._taken = 0
        self._budget_is_daily = False
        self._next_promote = 0.0
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
        self._set_target(self.concurrency)
        self._workers: set[asyncio.Task[None]] = set()
        self._retire = 0
        self._urgent: deque[Item] = deque()  # expedited items, taken before the queue
        self._notes: deque[str] = deque(maxlen=5)
        self._notes_total = 0
        self._attempt_seconds = 0.0
        self._cost_before = 0.0  # spent by earlier runs (kept in the store)
        self._cost_run = 0.0
        self._cost_unsaved = 0.0
        self._unpriced: set[str | None] = set()
        self._quota_until: float | None = None

    def _set_target(self, workers: int) -> None:
        self._target = max(2 * workers, min(512, 8 * workers))
        self._low_water = self._target // 2

    def _record_usage(self, usage: Usage) -> None:
        """Price an answer's tokens; stop the run when the budget is spent."""
        price = _price_for(self.job.prices, usage.model)
        if price is None:
            if usage.model not in self._unpriced:
                self._unpriced.add(usage.model)
                self.note(f"no price for model {usage.model!r}: its cost is not counted")
            return
        cost = price.of(usage)
        self._cost_run += cost
        self._cost_unsaved += cost
        spent = self._cost_before + self._cost_run
        if self.budget is not None and spent >= self.budget and self._stopping is None:
            self.note(f"budget of ${self.budget:,.2f} reached")
            self.stop("budget")

    def _process_pool(self) -> ProcessPoolExecutor:
        """The pool ``ctx.run_cpu`` uses, started on first use (one process per core)."""
        if self._processes is None:
            # forkserver: children start clean, not as copies of a process with threads
            method = "forkserver" if sys.platform != "win32" else "spawn"
            self._processes = ProcessPoolExecutor(
                os.cpu_count() or 1, mp_context=multiprocessing.get_context(method)
            )
        return self._processes

    # -- plumbing ----------------------------------------------------------------------

    async def _io_call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args))

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    def stop(self, reason: str = "interrupted") -> None:
        """Ask the run to stop: take no new items, let those in flight finish."""
        if self._stopping in (None, "max-items", "per-day"):
            self._stopping = reason
            self._progress.set()
            self._interrupt.set()
            # Requests still waiting for a slot have sent nothing: they give their item back.
            if self.job.keys is not None:
                self.job.keys.limiter.close()
        else:
            self._hard_stop.set()

    def note(self, message: str) -> None:
        """Something the user should see once (a key disabled, a limit learned)."""
        self._notes.append(message)
        self._notes_total += 1

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> RunResult:
        job = self.job
        self._store = await self._io_call(open_store, self.store_target, job.name)
        helpers: list[asyncio.Task[None]] = []
        sink = job.sink
        client = httpx.AsyncClient(
            timeout=job.http_timeout,
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=self.max_concurrency
            ),
        )
        if job.keys is not None:
            job.keys.bind(self.clock, self.note, stop_when_out_of_quota=self.until_quota)
        try:
            await self._io_call(self._open, sink)
            if not self._is_async:
                self._threads = ThreadPoolExecutor(self.max_concurrency, "paceline-task")
            on_usage = self._record_usage if job.prices else None
            self._http = PoolClient(client, job.keys, self.clock, on_usage)
            self._spawn(self.concurrency)
            helpers = [
                asyncio.create_task(self._ingest()),
                asyncio.create_task(self._flusher()),
                asyncio.create_task(self._heartbeat()),
                asyncio.create_task(self._expedite()),
            ]
            if self.auto and job.keys is not None and job.keys.limited:
                helpers.append(asyncio.create_task(self._autoscale()))
            await self._feed()
            await self._shut_down()
        except BaseException as exc:
            if self._fatal is None:
                self._fatal = exc  # recorded as a failed run; raised again below
            raise
        finally:
            workers = list(self._workers)
            # A flush under way finishes first: cancelled halfway, its batch would be
            # committed in the store but not counted here.
            async with self._flush_lock:
                for task in [*workers, *helpers]:
                    task.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            try:
                await self._final_flush()
            finally:
                await client.aclose()
                if self._threads is not None:
                    self._threads.shutdown(wait=False, cancel_futures=True)
                if self._processes is not None:
                    self._processes.shutdown(wait=True, cancel_futures=True)
                await self._io_call(self._close, sink)
                self._io.shutdown(wait=True)
        if self._fatal is not None:
            raise self._fatal
        interrupted = self._stopping not in (None, "max-items", "per-day", "quota", "budget")
        return RunResult(
            self.snapshot(),
            interrupted,
            self._stopping,
            describe_target(self.store_target),
            sink.describe(),
        )

    def _open(self, sink: Any) -> None:
        store = self.store
        store.register_worker(self.run_id, self.clock.time(), STALE_AFTER)
        store.recover(self.clock.time(), STALE_AFTER)
        try:
            store.set_sink_state(sink.open(store.sink_state()))
        except OSError as exc:
            raise ConfigError(f"cannot open {sink.describe()}: {exc.strerror or exc}") from None
        self._counts = store.counts()
        self._cost_before = store.cost()
        if self.budget is not None and self._cost_before >= self.budget:
            self.note(f"budget of ${self.budget:,.2f} already spent (${self._cost_before:,.2f})")
            self._stopping = "budget"
        if self.per_day is not None:
            # The daily budget is one more bound on what this run may take.
            left = max(0, self.per_day - store.counter(self._day_counter()))
            if self.max_items is None or left < self.max_items:
                self.max_items, self._budget_is_daily = left, True
        if self.job.keys is not None:
            # Today's spent quota survives restarts: start each daily meter from it.
            now = self.clock.time()
            for key, group in self.job.keys.groups():
                for meter in group.day:
                    meter.used(now)  # rolls the window to today
                    spent = store.day_usage(key.fingerprint, meter.window_start)
                    meter.restore(spent.get(meter.limit.unit, 0.0), now)
        self._duplicates = store.duplicates(0)[0]
        # A file may have grown since it was read to its end: only an iterable that was
        # read to its end is known to be done before reading it again.
        self._source_done = False

    def _close(self, sink: Any) -> None:
        if self._store is None:
            return
        try:
            self.store.release(self.run_id, self._budgets())
            state = "stopped" if self._stopping else "finished"
            if self._fatal is not None:
                state = "failed"
            self.store.finish_worker(self.run_id, self.clock.time(), state, self._stats())
        finally:
            sink.close()
            self.store.close()

    async def _feed(self) -> None:
        """Keep the queue stocked from the store until the work is done or a stop."""
        while self._stopping is None:
            if self.max_items is not None and self._taken >= self.max_items:
                self._stopping = "per-day" if self._budget_is_daily else "max-items"
                break
            room = self._target - self._queue.qsize()
            if room < self._low_water:
                await self._wait_progress(0.5)
                continue
            if self.max_items is not None:
                room = min(room, self.max_items - self._taken)
            now = self.clock.time()
            if now >= self._next_promote:
                # Due retries rejoin the line now, not only once the backlog is empty.
                self._next_promote = now + 1.0
                promoted = await self._io_call(self.store.promote_due, now)
                self._move("retry", "pending", promoted)
            items = await self._io_call(self.store.claim, room, self.run_id, now, self._budgets())
            if items:
                self._taken += len(items)
                self._move("pending", "running", len(items))
                for item in items:
                    self._queue.put_nowait(item)
                continue
            if not self._source_done:
                await self._wait_progress(0.2)
                continue
            promoted = await self._io_call(self.store.promote_due, self.clock.time())
            if promoted:
                self._move("retry", "pending", promoted)
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

    async def _shut_down(self) -> None:
        """Let the workers end: after the queue when the work is done (or --max-items);
        after their attempt in flight, within the grace period, on a stop; at once on a
        second signal or a fatal error."""
        loop = asyncio.get_running_loop()
        hard = asyncio.create_task(self._hard_stop.wait())
        interrupt = asyncio.create_task(self._interrupt.wait())
        remaining: set[asyncio.Task[Any]] = set(self._workers)
        deadline: float | None = None
        for _ in remaining:
            self._queue.put_nowait(None)
        try:
            while remaining and not hard.done():
                if deadline is None and self._stopping not in (None, "max-items", "per-day"):
                    # Items claimed but not started go back to the store (on close).
                    self._urgent.clear()
                    while not self._queue.empty():
                        self._queue.get_nowait()
                    for _ in remaining:
                        self._queue.put_nowait(None)
                    deadline = loop.time() + self.grace
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

    # -- workers -----------------------------------------------------------------------

    async def _expedite(self) -> None:
        """Every half second, put expedited items (``paceline expedite``) first in line."""
        while self._stopping is None:
            await asyncio.sleep(EXPEDITE_EVERY)
            items = await self._io_call(
                self.store.claim_expedited, self.run_id, self.clock.time(), self._budgets()
            )
            self._move("pending", "running", len(items))
            for item in items:
                if self._queue.empty():
                    self._queue.put_nowait(item)  # workers wait on the queue: wake one
                else:
                    self._urgent.append(item)

    async def _worker(self, http: PoolClient) -> None:
        queue = self._queue
        while True:
            item = self._urgent.popleft() if self._urgent else await queue.get()
            if item is None:
                return
            if queue.qsize() < self._low_water:
                self._progress.set()
            self._in_flight += 1
            started = time.monotonic()
            try:
                result = await self._attempt(item, http)
            finally:
                self._in_flight -= 1
            # moving average of how long an attempt takes, for the autoscaler
            took = time.monotonic() - started
            if self._attempt_seconds == 0:
                self._attempt_seconds = took
            self._attempt_seconds += 0.05 * (took - self._attempt_seconds)
            if result is None:
                return  # the item stays claimed and is handed back when the run closes
            self._results.append(result)
            if len(self._results) >= self.batching.size:
                self._flush_now.set()
            if not self._in_flight:
                self._progress.set()
            if self._retire > 0:
                self._retire -= 1
                return

    def _spawn(self, n: int) -> None:
        for _ in range(n):
            task = asyncio.create_task(self._worker(self._http))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        self._set_target(len(self._workers) - self._retire)

    async def _autoscale(self) -> None:
        """Grow workers until the keys are the bound (Little's law finds itself).

        Every half second: if every request was admitted at once, every worker is busy and
        no 429 came back, the keys have room the workers cannot fill: grow by half. 429s
        mean the provider is the bound already: shrink by a quarter. Many workers only
        waiting for slots: hand a tenth back.
        """
        assert self.job.keys is not None
        limiter = self.job.keys.limiter
        crowded, rejected = 0, limiter.rejections
        while self._stopping is None:
            await asyncio.sleep(AUTOSCALE_EVERY)
            workers = len(self._workers) - self._retire
            new_rejections, rejected = limiter.rejections - rejected, limiter.rejections
            if new_rejections and workers > AUTO_START:
                self._shrink(workers, max(1, workers // 4))
                crowded = 0
            elif (
                not new_rejections
                and limiter.waiting == 0
                and self._in_flight >= 0.9 * workers
                and self._queue.qsize()
            ):
                ceiling = min(self.max_concurrency, self._useful_workers())
                self._spawn(max(0, min(max(2, workers // 2), ceiling - workers)))
                crowded = 0
            elif limiter.waiting > max(4, workers // 2):
                crowded += 1
                if crowded >= 8 and workers > AUTO_START:
                    self._shrink(workers, max(1, workers // 10))
                    crowded = 0
            else:
                crowded = 0

    def _useful_workers(self) -> int:
        """Little's law: items in flight = item rate the keys allow × time per item.

        Half again as many, for the spread of latencies; no bound when the keys' limits
        are unknown (then 429s and waits are the signal).
        """
        pool = self.job.keys
        assert pool is not None
        per_minute = capacity(pool).per_minute
        finished = self._done_run + self._failed_run
        if math.isinf(per_minute) or not finished or self._attempt_seconds <= 0:
            return self.max_concurrency
        requests = sum(k.requests for k in pool.keys)
        per_item = max(1.0, requests / finished)
        return math.ceil(per_minute / 60 / per_item * self._attempt_seconds * 1.5) + 2

    def _shrink(self, workers: int, by: int) -> None:
        by = min(by, workers - AUTO_START)
        if by > 0:
            self._retire += by  # workers leave after their current item
            self._set_target(workers - by)

    async def _attempt(
        self, item: Item, http: PoolClient
    ) -> tuple[Outcome, dict[str, Any] | None] | None:
        """Run the task once; ``None`` when the run cannot go on (no usable key)."""
        job = self.job
        fn = job.task_fn
        assert fn is not None
        attempts = item.attempts + 1
        ctx = Context(http, job.name, attempts, self.clock, self._process_pool)
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
        except Stopping:
            return None  # the run is stopping: nothing was sent for this attempt
        except QuotaWait as exc:
            self._quota_until = exc.until
            self.stop("quota")
            return None
        except NoUsableKey as exc:
            self._stop_for_keys(str(exc))
            return None
        except Exception as exc:
            now = self.clock.time()
            failure = classify(exc, now, job.retry_on, self.redact)
            message = failure.message
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
        return Outcome(item.seq, Status.DONE, attempts, item_id=item.id, wrote=True), row

    def _stop_for_keys(self, reason: str) -> None:
        self.note(reason)
        self._stopping = self._stopping or "no usable key"
        self._hard_stop.set()
        self._progress.set()

    def _fatal_stop(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
        self._stopping = self._stopping or "error"
        self._hard_stop.set()
        self._progress.set()

    # -- ingest, flush, heartbeat ------------------------------------------------------

    async def _ingest(self) -> None:
        """Read the source into the store in chunks, committing the position with each.

        Reading runs on its own thread (a slow source must not hold up claims, commits or
        the heartbeat); inserting runs on the store thread.
        """
        position, exhausted = await self._io_call(self.store.source_position)
        if exhausted and isinstance(self.job.source, IterableSource):
            self._source_done = True
            return  # an iterable may not be readable twice; it was read to its end
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(1, thread_name_prefix="paceline-source")
        try:
            records = self.job.source.read(position)
            while self._stopping is None:
                chunk = await loop.run_in_executor(reader, self._read_chunk, records)
                exhausted = len(chunk) < INGEST_CHUNK
                after = chunk[-1].after if chunk else None
                result = await self._io_call(self._store_chunk, chunk, after, exhausted)
                self._counts["pending"] = self._counts.get("pending", 0) + result.inserted
                self._counts["failed"] = self._counts.get("failed", 0) + result.invalid
                self._counts["skipped"] = self._counts.get("skipped", 0) + result.skipped
                self._duplicates += result.duplicates
                for record in chunk:
                    if record.error is not None:
                        self._errors.append((f"line {record.line}", record.error))
                self._progress.set()
                if exhausted:
                    self._source_done = True
                    return
        except Exception as exc:
            self._fatal_stop(exc)
        finally:
            reader.shutdown(wait=False, cancel_futures=True)

    def _read_chunk(self, records: Iterator[Record]) -> list[Record]:
        """The next records, with the job's ``needs`` and ``priority`` applied (user code,
        run here on the source thread)."""
        chunk = list(itertools.islice(records, INGEST_CHUNK))
        needs, priority = self.job.needs, self.job.priority
        if needs is None and priority is None:
            return chunk
        out = []
        for r in chunk:
            if r.error is None and r.id is not None and r.data is not None:
                item = Item(r.id, r.data)
                try:
                    skip = needs is not None and not needs(item)
                    rank = float(priority(item)) if priority is not None else 0.0
                except Exception as exc:
                    r = replace(r, error=f"needs/priority raised {_describe(exc)}")
                else:
                    r = replace(r, skip=skip, priority=rank)
            out.append(r)
        return out

    def _store_chunk(
        self, chunk: list[Record], after: Position | None, exhausted: bool
    ) -> IngestResult:
        store = self.store
        if after is None:
            after = store.source_position()[0]
        return store.ingest(chunk, after, exhausted, self.clock.time())

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
            while self._results:
                size = self.batching.size
                batch, self._results = self._results[:size], self._results[size:]
                await self._flush_batch(batch)

    async def _flush_batch(self, batch: list[tuple[Outcome, dict[str, Any] | None]]) -> None:
        keys, days = self._key_usage()
        cost, self._cost_unsaved = self._cost_unsaved, 0.0
        outcomes = await self._io_call(self._commit, batch, keys, days, cost)
        for outcome in outcomes:
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
        self,
        batch: list[tuple[Outcome, dict[str, Any] | None]],
        keys: list[KeyUsage],
        days: list[tuple[str, float, str, float]],
        cost: float = 0.0,
    ) -> list[Outcome]:
        """Sink first, then the statuses; returns the outcomes as committed."""
        outcomes = [o for o, _ in batch]
        rows = [row for _, row in batch if row is not None]
        state = None
        if rows:
            started = time.perf_counter()
            try:
                state = self.job.sink.write(rows)
                self.batching.observe(len(rows), time.perf_counter() - started)
            except Exception as exc:
                if _sink_level(exc):
                    raise
                state, outcomes = self._write_rows_alone(batch)
        return self.store.complete(
            outcomes, self.clock.time(), worker_id=self.run_id, sink_state=state, keys=keys,
            days=days, cost=cost,
        )  # fmt: skip

    def _write_rows_alone(
        self, batch: list[tuple[Outcome, dict[str, Any] | None]]
    ) -> tuple[str | None, list[Outcome]]:
        """A row the sink cannot take fails its item; the rest of the batch goes in."""
        state, outcomes = None, []
        for outcome, row in batch:
            if row is not None:
                try:
                    state = self.job.sink.write([row]) or state
                except Exception as exc:
                    if _sink_level(exc):
                        raise
                    message = self.redact(f"the sink refused the result: {_describe(exc)}")
                    outcome = Outcome(
                        outcome.seq, Status.FAILED, outcome.attempts, message, None, outcome.item_id
                    )
            outcomes.append(outcome)
        return state, outcomes

    async def _final_flush(self) -> None:
        if self._store is None:
            return
        try:
            await self._flush()
            async with self._flush_lock:
                # Key usage, today's quota and cost are saved even with no result left to
                # write: a run stopped by its budget must not forget what it spent.
                await self._flush_batch([])
        except Exception as exc:
            if self._fatal is None:
                self._fatal = exc

    def _day_counter(self) -> str:
        return f"day:{self._today():.0f}"

    def _budgets(self) -> list[tuple[str, int]]:
        """The claim budgets of this run, counted in the store."""
        budgets = []
        if self.per_day is not None:
            budgets.append((self._day_counter(), self.per_day))
        return budgets

    def _today(self) -> float:
        """The start of the local day, for the daily item budget."""
        return day_start(self.clock.time(), LOCAL_TZ)

    def _key_usage(self) -> tuple[list[KeyUsage], list[tuple[str, float, str, float]]]:
        """Per key, what changed since the last commit; per group, today's spent quota."""
        pool = self.job.keys
        if pool is None:
            return [], []
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

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            # A missed heartbeat (store busy) is simply retried a second later.
            try:
                control = await self._io_call(
                    self.store.heartbeat, self.run_id, self.clock.time(), self._stats()
                )
            except Exception:
                continue
            if control.stop_requested and self._stopping is None:
                self.note("paceline stop: finishing the items in flight")
                self.stop("stop requested")

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
            "workers": snap.workers,
            "batch_size": snap.batch_size,
            "cost_usd": round(snap.cost_total, 6),
            "cost_per_item_usd": snap.cost_per_item,
            "cost_per_minute_usd": snap.cost_per_minute,
            "quota_until": snap.quota_until,
        }

    def snapshot(self) -> Snapshot:
        """The run's numbers now (cheap: no I/O)."""
        c = self._counts
        done, failed, skipped = c.get("done", 0), c.get("failed", 0), c.get("skipped", 0)
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
        keys = [] if self.job.keys is None else self.job.keys.describe(self.clock.time())
        elapsed = self.clock.monotonic() - self._rates.start
        return Snapshot(
            job=self.job.name,
            total=done + failed + pending + running + skipped,
            done=done,
            failed=failed,
            pending=pending,
            skipped=skipped,
            running=running,
            retrying=retrying,
            source_done=self._source_done,
            elapsed=elapsed,
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
            notes=list(self._notes),
            notes_total=self._notes_total,
            quota_until=self._quota_until
            or (self.job.keys.limiter.quota_wait(self.clock.time()) if self.job.keys else None),
            workers=len(self._workers) - self._retire,
            batch_size=self.batching.size,
            cost_total=self._cost_before + self._cost_run,
            cost_per_item=(self._cost_run / self._done_run) if self._done_run else None,
            cost_per_minute=(self._cost_run * 60 / elapsed) if elapsed > 1 else None,
        )


def _sink_level(exc: BaseException) -> bool:
    """Whether a sink error is about the sink (disk, lock) rather than one row's values."""
    if isinstance(exc, OSError):
        return True
    if type(exc).__module__.startswith("psycopg") and type(exc).__name__ in (
        "OperationalError",
        "InterfaceError",
    ):
        return True  # the connection, not the row (psycopg is an optional extra)
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(w in text for w in ("locked", "busy", "disk", "unable to open", "readonly"))
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _price_for(prices: dict[str, Price], model: str | None) -> Price | None:
    """The price of ``model``, or of the longest priced name it starts with
    (``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``)."""
    if model is None:
        return None
    if model in prices:
        return prices[model]
    names = [name for name in prices if model.startswith(name)]
    return prices[max(names, key=len)] if names else None
