"""One attempt of the task on one item, and what its end means for the item.

An ``async`` task runs on the event loop (bounded by the job's ``timeout``); a plain
``def`` on a thread pool; ``ctx.run_cpu`` sends CPU-heavy work to a process pool started
on first use. The outcome is a stored decision: ``done`` (with the row for the sink),
``retry`` with its due time, or ``failed`` with the error, redacted.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import multiprocessing
import os
import random
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar, cast

from paceline.client import PoolClient
from paceline.clock import Clock
from paceline.context import Context
from paceline.item import Item, Status
from paceline.keys import NoUsableKey
from paceline.limiter import QuotaWait, WaitLedger, wait_ledger
from paceline.retry import classify
from paceline.store import Outcome

from .circuit import Circuit, is_outage
from .guard import CONTROL, signal_box
from .progress import Progress
from .spec import JobSpec
from .state import RunState

__all__ = ["Attempts", "Result"]

T = TypeVar("T")

#: An attempt's end: the outcome, and the sink row when the task returned one.
Result = tuple[Outcome, dict[str, Any] | None]


def follow_parent(pid: int) -> None:
    """In a pool process: exit when the run's process ``pid`` is gone (killed with -9, it
    cannot shut its pool down; its pool processes must not live on)."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)  # readable once the process has exited (Linux ≥ 5.3)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            select.select([fd], [], [])
            os._exit(1)
        while True:  # elsewhere: look once a second
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(1.0)

    threading.Thread(target=watch, name="paceline-follow-parent", daemon=True).start()


#: The automatic attempt timeout's floor and ceiling, in seconds.
MIN_TIMEOUT, MAX_TIMEOUT = 5.0, 600.0


class Attempts:
    """Runs attempts of the job's task; owns the thread and process pools they use."""

    def __init__(
        self,
        job: JobSpec,
        http: PoolClient,
        clock: Clock,
        state: RunState,
        progress: Progress,
        redact: Callable[[str], str],
        max_threads: int,
        circuit: Circuit,
    ) -> None:
        assert job.task_fn is not None
        self.job = job
        self.circuit = circuit
        self.http = http
        self.clock = clock
        self.state = state
        self.progress = progress
        self.redact = redact
        self.rng = random.Random()
        self.is_async = inspect.iscoroutinefunction(job.task_fn)
        self.threads = None if self.is_async else ThreadPoolExecutor(max_threads, "paceline-task")
        self.processes: ProcessPoolExecutor | None = None
        self.quota_until: float | None = None
        #: moving average of the seconds one attempt takes (the autoscaler's Little's law)
        self.seconds = 0.0
        #: how long recent successful attempts took, for the automatic attempt timeout
        self.durations: deque[float] = deque(maxlen=200)
        #: the attempts running now (their workers' tasks): when each began, and how long
        #: it has waited for the limiter (not counted against the timeout)
        self.running: dict[asyncio.Task[Any] | None, tuple[float, WaitLedger]] = {}
        self.cut: set[asyncio.Task[Any]] = set()  # cancelled for taking too long
        self._timeout, self._stuck_after = MAX_TIMEOUT, math.inf

    def timeout(self) -> float:
        """The time one attempt may take: the job's ``timeout``, else automatic: five
        times the slowest of the recent successful attempts (their 99th percentile), at
        least :data:`MIN_TIMEOUT`, at most :data:`MAX_TIMEOUT` (and that ceiling until
        enough attempts were seen). Worked out again by :meth:`retime`."""
        return self.job.timeout or self._timeout

    def stuck_after(self) -> float:
        """An attempt running longer than this is stuck (3 × the 95th percentile of
        recent attempts, at least a second): its worker does not count as capacity."""
        return self._stuck_after

    def _percentiles(self) -> None:
        if len(self.durations) < 20:
            self._timeout, self._stuck_after = MAX_TIMEOUT, math.inf
            return
        ordered = sorted(self.durations)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        self._timeout = min(MAX_TIMEOUT, max(MIN_TIMEOUT, 5 * p99))
        self._stuck_after = max(1.0, 3 * ordered[int(len(ordered) * 0.95)])

    def process_pool(self) -> ProcessPoolExecutor:
        """The pool ``ctx.run_cpu`` uses, started on first use (one process per core)."""
        if self.processes is None:
            # forkserver: children start clean, not as copies of a process with threads
            method = "forkserver" if sys.platform != "win32" else "spawn"
            self.processes = ProcessPoolExecutor(
                os.cpu_count() or 1,
                mp_context=multiprocessing.get_context(method),
                initializer=follow_parent,
                initargs=(os.getpid(),),
            )
        return self.processes

    def close(self) -> None:
        if self.threads is not None:
            self.threads.shutdown(wait=False, cancel_futures=True)
        if self.processes is not None:
            self.processes.shutdown(wait=True, cancel_futures=True)

    def _observe(self, took: float) -> None:
        if self.seconds == 0:
            self.seconds = took
        self.seconds += 0.05 * (took - self.seconds)

    async def run(self, item: Item) -> Result | None:
        """Run the task once; ``None`` when the run cannot go on (stopping, no usable key,
        every key out of quota): the item stays claimed and is given back on close."""
        started = self.clock.monotonic()
        try:
            return await self._run(item)
        finally:
            self._observe(self.clock.monotonic() - started)

    async def _run(self, item: Item) -> Result | None:
        box: list[BaseException] = []
        token = signal_box.set(box)
        try:
            result = await self._call(item)
        finally:
            signal_box.reset(token)
        if box:
            # The limiter said stop, out of quota or no key left (and the task may have
            # caught it): the item was not done, and the signal steers the run.
            self._control(box[0])
            return None
        return result

    def _control(self, exc: BaseException) -> None:
        if isinstance(exc, QuotaWait):
            self.quota_until = exc.until
            self.state.stop("quota")
        elif isinstance(exc, NoUsableKey):
            self.progress.note(str(exc))
            self.state.halt("no usable key")

    def _redactor(self, item: Item) -> Callable[[str], str]:
        """Keys, and the item's secret fields' values, out of an error's text."""
        secrets = [
            str(v) for k, v in item.data.items()
            if k in self.job.secret_fields and v is not None and len(str(v)) >= 3
        ]  # fmt: skip
        if not secrets:
            return self.redact

        def redact(text: str) -> str:
            for secret in sorted(secrets, key=len, reverse=True):
                text = text.replace(secret, "***")
            return self.redact(text)

        return redact

    async def _within_timeout(self, call: Awaitable[T], ledger: WaitLedger) -> T:
        """Await ``call``; :meth:`retime`, twice a second, cuts it once it has run longer
        than :meth:`timeout` (also an attempt that began before the latencies were known),
        time spent waiting for the limiter not counted. One look for all attempts, not a
        timer each: the engine's hot path stays light."""
        me = asyncio.current_task()
        self.running[me] = (self.clock.monotonic(), ledger)
        token = wait_ledger.set(ledger)
        try:
            return await call
        except asyncio.CancelledError:
            if me is None or me not in self.cut:
                raise
            self.cut.discard(me)
            me.uncancel()
            limit = self.timeout()
            automatic = "" if self.job.timeout else " (automatic: it follows the latencies seen)"
            raise TimeoutError(f"the attempt took more than {limit:.1f} s{automatic}") from None
        finally:
            wait_ledger.reset(token)
            self.running.pop(me, None)

    def retime(self) -> int:
        """Work the automatic timeout out again from the latencies seen, and cut the
        attempts that have run longer than it; returns how many run longer than
        :meth:`stuck_after` (stuck: their workers do not count as capacity)."""
        self._percentiles()
        limit, stuck_after = self.timeout(), self.stuck_after()
        now = self.clock.monotonic()
        stuck = 0
        for task, (started, ledger) in list(self.running.items()):
            took = now - started - ledger.waited(now)
            if took > limit and task is not None and task not in self.cut:
                self.cut.add(task)
                task.cancel()
            elif took > stuck_after:
                stuck += 1
        return stuck

    async def _call(self, item: Item) -> Result | None:
        job = self.job
        fn = job.task_fn
        assert fn is not None
        attempts = item.attempts + 1
        ctx = Context(self.http, job.name, attempts, self.clock, self.process_pool)
        started = self.clock.monotonic()
        ledger = WaitLedger()
        try:
            if self.is_async:
                call = cast(Awaitable[dict[str, Any] | None], fn(item, ctx))
            else:
                loop = asyncio.get_running_loop()
                sync_fn = cast(Callable[[Item, Context], dict[str, Any] | None], fn)
                call = loop.run_in_executor(self.threads, sync_fn, item, ctx)
            result = await self._within_timeout(call, ledger)
        except asyncio.CancelledError:
            raise
        except CONTROL as exc:
            box = signal_box.get()
            if box is not None and not box:
                box.append(exc)  # raised outside ctx.http (e.g. by the task itself)
            return None
        except Exception as exc:
            now = self.clock.time()
            failure = classify(exc, now, job.retry_on, self._redactor(item))
            if failure.ignored:
                self.progress.note(failure.ignored, once=True)
            outage = is_outage(exc)
            self.circuit.record(outage, failure.message.split(":", 1)[0][:80])
            if outage and failure.retryable and self.circuit.forgives():
                # Lost to an outage, not to the item: try again once the provider
                # answers, without using up a retry.
                wait = failure.retry_after or 1.0
                outcome = Outcome(
                    item.seq, Status.RETRY, item.attempts, failure.message, now + wait, item.id
                )
                return outcome, None
            if failure.retryable and attempts <= job.retries:
                delay = failure.retry_after
                if delay is None:
                    delay = job.backoff.delay(attempts, self.rng)
                outcome = Outcome(
                    item.seq, Status.RETRY, attempts, failure.message, now + delay, item.id
                )
                return outcome, None
            return Outcome(item.seq, Status.FAILED, attempts, failure.message, None, item.id), None
        self.circuit.record(False)
        self.durations.append(self.clock.monotonic() - started - ledger.total)
        if result is None:
            return Outcome(item.seq, Status.DONE, attempts, item_id=item.id), None
        if not isinstance(result, dict):
            message = f"task returned {type(result).__name__}, expected a dict or None"
            return Outcome(item.seq, Status.FAILED, attempts, message, None, item.id), None
        row = dict(result)
        row["id"] = item.id
        return Outcome(item.seq, Status.DONE, attempts, item_id=item.id, wrote=True), row
