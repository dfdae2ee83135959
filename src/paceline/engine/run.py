"""The run loop: a continuous pipeline from the store, through the task, to the sink.

::

    source ──ingest──▶ store ──claim──▶ queue ──▶ N workers ──▶ results ──commit──▶ sink, store
                         ▲                                                               │
                         └────────────── retries wait here with their due time ◀────────┘

One concept per piece: :class:`~.ingest.Ingestor` reads the source into the store,
:class:`~.dispatch.Dispatcher` feeds claimed items to workers, :class:`~.attempt.Attempts`
runs the task once, :class:`~.commit.Committer` writes results, :class:`~.autoscale.Autoscaler`
sizes the workers, :class:`~.budget.Budgets` bounds what a run spends,
:class:`~.membership.Membership` keeps the worker registered, and :class:`Engine` wires
them for one run and answers :meth:`Engine.snapshot`. All store I/O runs on store threads
(:class:`~.storeio.StoreIO`), so the event loop never blocks on a database.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from paceline._redact import redact, remember
from paceline.clock import Clock
from paceline.errors import ConfigError, PacelineError
from paceline.sinks import JSONLSink, SQLiteSink
from paceline.store import RowWriter, WorkerInfo, describe_target

from .attempt import Attempts
from .autoscale import AUTO_START, Autoscaler
from .budget import Budgets
from .circuit import Circuit
from .commit import Committer
from .dispatch import Dispatcher
from .guard import GuardedClient
from .ingest import Ingestor, describe_exception
from .membership import Membership
from .progress import Progress
from .quota import PoolRun
from .records import RunResult, Snapshot
from .refill import Refiller
from .spec import JobSpec
from .state import RunState
from .storeio import StoreIO

__all__ = ["Engine"]

#: Workers when there is no key pool to size them by.
FIXED_DEFAULT = 16
#: How often the rates are sampled (what the dashboard and status show).
TICK_EVERY = 0.25


class Engine:
    """One run of a job by this worker. Use :meth:`Job.run` rather than this directly."""

    def __init__(
        self,
        job: JobSpec,
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
        limiter: str | None = None,
    ) -> None:
        if job.task_fn is None:
            raise ConfigError(f"job {job.name!r} has no task: decorate a function with @job.task")
        if budget is not None and not job.prices:
            raise ConfigError("--budget needs prices: Job(prices={model: Price(...)})")
        self.job = job
        self.store_target = store_target
        self.grace = grace
        self.until_quota = until_quota
        self.clock = clock
        self.worker_id = uuid.uuid4().hex
        # None: automatic. Workers grow while the key pool's limiter admits every request
        # at once (the keys are not yet the bound) and shrink when many wait for a slot.
        self.auto = concurrency is None and job.keys is not None
        self.concurrency = max(1, concurrency or (AUTO_START if self.auto else FIXED_DEFAULT))
        self.max_concurrency = max(self.concurrency, job.max_concurrency if self.auto else 0)
        if job.keys is not None:
            remember((k.secret, k.masked) for k in job.keys.keys)
        # Every text the run prints or stores: no key of any pool, nor a secret-looking
        # environment value, in it.
        self.redact: Callable[[str], str] = redact

        self.state = RunState()
        self.progress = Progress(clock)
        self.budgets = Budgets(
            max_items=max_items,
            per_day=per_day,
            budget=budget,
            prices=job.prices,
            clock=clock,
            progress=self.progress,
            state=self.state,
        )
        self.pool = PoolRun(job.keys, clock, limiter) if job.keys is not None else None
        self.io = StoreIO(store_target, job.name, name="paceline-store")
        self.membership = Membership(
            store_target, job.name, self.worker_id, clock, self.state, self.progress,
            self.budgets, self._stats,
        )  # fmt: skip
        self.committer = Committer(
            job.sink, self.io, self.progress, self.state, clock, self.worker_id, self.budgets,
            self.pool, self.redact, batching=job.batch.start(), flush_interval=flush_interval,
        )  # fmt: skip
        self.circuit = Circuit(clock, self.progress, self.state)
        self.refiller = Refiller(job, self.io)
        self._client: httpx.AsyncClient | None = None
        self._attempts: Attempts | None = None
        self._dispatcher: Dispatcher | None = None
        self._started = False
        self._duplicate_examples: list[str] = []
        if self.pool is not None:
            self.state.on_stop(self.pool.close)

    # -- control -----------------------------------------------------------------------

    def stop(self, reason: str = "interrupted") -> None:
        """Ask the run to stop: take no new items, let those in flight finish; a second
        call stops at once."""
        self.state.stop(reason)

    def note(self, message: str) -> None:
        """Something the user should see once (a key disabled, a limit learned)."""
        self.progress.note(message)

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> RunResult:
        job, state = self.job, self.state
        helpers: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(
            timeout=job.http_timeout,
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=self.max_concurrency
            ),
        )
        if self.pool is not None:
            self.pool.bind(self.note, until_quota=self.until_quota)
        on_usage = self.budgets.record_usage if job.prices else None
        http = GuardedClient(self._client, job.keys, self.clock, on_usage)
        self._attempts = attempts = Attempts(
            job, http, self.clock, state, self.progress, self.redact, self.max_concurrency,
            self.circuit,
        )  # fmt: skip
        try:
            if self.pool is not None:
                await self.pool.start()
            await self._open()
            self._started = True
            dispatcher = self._dispatcher = Dispatcher(
                self.io, self.progress, state, self.clock, self.worker_id, self.budgets,
                attempts, self.committer, self.circuit, self.refiller,
            )  # fmt: skip
            dispatcher.spawn(self.concurrency)
            ingestor = Ingestor(
                job, self.io, self.progress, state, self.clock, self.worker_id, self.redact,
                take=dispatcher.hunger, deliver=dispatcher.deliver,
            )  # fmt: skip
            helpers = [
                asyncio.create_task(ingestor.run()),
                asyncio.create_task(self.committer.run()),
                asyncio.create_task(self.membership.beat_forever()),
                asyncio.create_task(dispatcher.expedite_forever()),
                asyncio.create_task(self._tick()),
                asyncio.create_task(dispatcher.replace_stuck_forever()),
            ]
            if self.auto and self.pool is not None and self.pool.limited:
                scaler = Autoscaler(
                    dispatcher, self.pool, attempts, self.progress, state, self.clock,
                    self.max_concurrency,
                )  # fmt: skip
                helpers.append(asyncio.create_task(scaler.run()))
            await dispatcher.feed()
            await dispatcher.shut_down(self.grace)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if state.fatal is None:
                state.fatal = exc  # recorded as a failed run
            if not self._started or self._describe_failure(exc) is None:
                raise
        finally:
            workers = list(self._dispatcher.workers) if self._dispatcher else []
            # A commit under way finishes first: cancelled halfway, its batch would be
            # committed in the store but not counted here.
            async with self.committer.lock:
                for task in [*workers, *helpers]:
                    task.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            try:
                await self.committer.final()
            finally:
                await self._close()
        error = None
        if state.fatal is not None:
            error = self._describe_failure(state.fatal) if self._started else None
            if error is None:
                raise state.fatal
            self.progress.note(error)
        self.progress.tick()  # the summary's rates include the very end
        snapshot = self.snapshot()
        snapshot.duplicate_examples = self._duplicate_examples
        jobfile = getattr(job, "file", None)
        return RunResult(
            snapshot, state.interrupted, state.stopping, describe_target(self.store_target),
            job.sink.describe(), error, None if jobfile is None else str(jobfile),
        )  # fmt: skip

    def _describe_failure(self, exc: BaseException) -> str | None:
        """The cause of a failure of the store, the sink or the source, in one line (the
        run then ends with its summary); ``None`` for anything else (a bug: raised)."""
        if isinstance(exc, PacelineError):
            return self.redact(str(exc))
        driver = type(exc).__module__.split(".")[0]
        if isinstance(exc, (sqlite3.Error, OSError)) or driver == "psycopg":
            where = describe_target(self.store_target)
            return self.redact(f"store {where}: {describe_exception(exc)}")
        return None

    async def _open(self) -> None:
        io, job = self.io, self.job
        await io.open()
        info = await self.membership.join()
        store = io.store
        self._refuse_unshareable_sink(info)
        try:
            await io.call(self._open_sink)
        except OSError as exc:
            raise ConfigError(f"cannot open {job.sink.describe()}: {exc.strerror or exc}") from None
        if store.shares_database(job.sink) and isinstance(job.sink, RowWriter):
            self.committer.writer = job.sink
        self.progress.counts = await io.call(store.counts)
        self.progress.duplicates = (await io.call(store.duplicates, 0))[0]
        await io.call(self.budgets.open, store, info.run_id)
        if self.pool is not None:
            await self.pool.restore_days(io)

    def _open_sink(self) -> None:
        store = self.io.store
        store.set_sink_state(self.job.sink.open(store.sink_state()))

    def _refuse_unshareable_sink(self, me: WorkerInfo) -> None:
        """A sink on one machine's disk cannot take rows from workers elsewhere."""
        others = [p for p in self.membership.peers if p.worker_id != me.worker_id]
        if not others:
            return
        sink = self.job.sink
        if isinstance(sink, JSONLSink):
            where = "another worker"
        elif isinstance(sink, SQLiteSink) and any(p.host != me.host for p in others):
            where = "a worker on another machine"
        else:
            return
        first = others[0]
        raise ConfigError(
            f"{sink.describe()} cannot be shared with {where} (pid {first.pid} on "
            f"{first.host}) already running this job: use a PostgresSink to run many workers"
        )

    async def _close(self) -> None:
        state = self.state
        try:
            if self._client is not None:
                await self._client.aclose()
            if self.pool is not None:
                await self.pool.aclose()
            if self._attempts is not None:
                self._attempts.close()
            self.refiller.close()
            if self.io.opened:
                store = self.io.store
                await self.io.call(store.release, self.worker_id, self.budgets.caps())
                if self.progress.duplicates:
                    _, some = await self.io.call(store.duplicates, 3)
                    self._duplicate_examples = [item_id for _, item_id, _ in some]
        finally:
            ended = "failed" if state.fatal is not None else (
                "stopped" if state.stopping else "finished"
            )  # fmt: skip
            try:
                await self.membership.leave(ended)
            finally:
                if self.io.opened:
                    await self.io.call(self.job.sink.close)
                await self.io.close()

    async def _tick(self) -> None:
        while True:
            self.progress.tick()
            await self.clock.sleep(TICK_EVERY)

    # -- numbers -----------------------------------------------------------------------

    def _stats(self) -> dict[str, Any]:
        """What the store keeps about this worker (``status`` reads it)."""
        snap = self.snapshot()
        return {
            "pid": os.getpid(),
            "in_flight": self.in_flight,
            "claimed": self.progress.counts.get("running", 0),
            "rate_now": round(self.progress.rates.now, 2),
            "rate_avg": round(self.progress.rates.avg, 2),
            "rate_peak": round(self.progress.rates.peak, 2),
            "eta_seconds": None if snap.eta is None else round(snap.eta, 1),
            "elapsed": round(snap.elapsed, 1),
            "stopping": snap.stopping,
            "workers": snap.workers,
            "batch_size": snap.batch_size,
            "done_this_run": self.progress.done_run,
            "failed_this_run": self.progress.failed_run,
            "cost_usd": round(snap.cost_total, 6),
            "cost_per_item_usd": snap.cost_per_item,
            "cost_per_minute_usd": snap.cost_per_minute,
            "quota_until": snap.quota_until,
            "circuit": self.circuit.describe(),
        }

    @property
    def in_flight(self) -> int:
        """Attempts this worker has running now (the snapshot counts every worker's)."""
        return self._dispatcher.in_flight if self._dispatcher else 0

    def snapshot(self) -> Snapshot:
        """The run's numbers now: cheap, no I/O, and reading them changes nothing."""
        p, d = self.progress, self._dispatcher
        c = p.counts
        done, failed, skipped = c.get("done", 0), c.get("failed", 0), c.get("skipped", 0)
        retrying = c.get("retry", 0)
        own = d.in_flight if d is not None else 0
        others = [w for w in self.membership.peers if w.worker_id != self.worker_id]
        running = own + sum(int(w.stats.get("in_flight") or 0) for w in others)
        pending = max(0, c.get("pending", 0) + retrying + c.get("running", 0) - running)
        rates = p.rates
        rate_now = rates.now + sum(float(w.stats.get("rate_now") or 0) for w in others)
        rate_avg = rates.avg + sum(float(w.stats.get("rate_avg") or 0) for w in others)
        remaining = pending + running
        rate = rate_now or rate_avg
        eta = remaining / rate if rate > 0 and p.source_done else None
        if remaining == 0 and p.source_done:
            eta = 0.0
        elapsed = rates.elapsed()
        budgets = self.budgets
        quota_until = self._attempts.quota_until if self._attempts else None
        if quota_until is None and self.pool is not None:
            quota_until = self.pool.quota_wait()
        return Snapshot(
            job=self.job.name,
            total=done + failed + pending + running + skipped,
            done=done,
            failed=failed,
            pending=pending,
            skipped=skipped,
            running=running,
            retrying=retrying,
            source_done=p.source_done,
            elapsed=elapsed,
            rate_now=rate_now,
            rate_avg=rate_avg,
            rate_peak=max(rates.peak, rate_now),
            eta=eta,
            done_this_run=p.done_run,
            failed_this_run=p.failed_run,
            errors=list(p.errors),
            keys=self.pool.describe() if self.pool is not None else [],
            duplicates=p.duplicates,
            stopping=self.state.stopping,
            notes=list(p.notes),
            notes_total=p.notes_total,
            quota_until=quota_until,
            workers=d.size if d is not None else 0,
            batch_size=self.committer.batching.size,
            cost_total=budgets.cost_total,
            cost_per_item=(budgets.cost_run / p.done_run) if p.done_run else None,
            cost_per_minute=(budgets.cost_run * 60 / elapsed) if elapsed > 1 else None,
            peers=[_peer(w, w.worker_id == self.worker_id) for w in self.membership.peers],
            circuit=self.circuit.describe(),
        )


def _peer(w: WorkerInfo, me: bool) -> dict[str, Any]:
    return {
        "host": w.host,
        "pid": w.pid,
        "started_at": w.started_at,
        "heartbeat": w.heartbeat,
        "done": w.stats.get("done_this_run", 0),
        "rate_now": w.stats.get("rate_now", 0.0),
        "this": me,
    }
