"""One attempt of the task on one item, and what its end means for the item.

An ``async`` task runs on the event loop (bounded by the job's ``timeout``); a plain
``def`` on a thread pool; ``ctx.run_cpu`` sends CPU-heavy work to a process pool started
on first use. The outcome is a stored decision: ``done`` (with the row for the sink),
``retry`` with its due time, or ``failed`` with the error, redacted.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import random
import select
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, cast

from paceline.client import PoolClient
from paceline.clock import Clock
from paceline.context import Context
from paceline.item import Item, Status
from paceline.keys import NoUsableKey
from paceline.limiter import QuotaWait
from paceline.retry import classify
from paceline.store import Outcome

from .guard import CONTROL, signal_box
from .progress import Progress
from .spec import JobSpec
from .state import RunState

__all__ = ["Attempts", "Result"]

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
    ) -> None:
        assert job.task_fn is not None
        self.job = job
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

    async def _call(self, item: Item) -> Result | None:
        job = self.job
        fn = job.task_fn
        assert fn is not None
        attempts = item.attempts + 1
        ctx = Context(self.http, job.name, attempts, self.clock, self.process_pool)
        try:
            if self.is_async:
                call = cast(Awaitable[dict[str, Any] | None], fn(item, ctx))
                result = await (asyncio.wait_for(call, job.timeout) if job.timeout else call)
            else:
                loop = asyncio.get_running_loop()
                sync_fn = cast(Callable[[Item, Context], dict[str, Any] | None], fn)
                result = await loop.run_in_executor(self.threads, sync_fn, item, ctx)
        except asyncio.CancelledError:
            raise
        except CONTROL as exc:
            box = signal_box.get()
            if box is not None and not box:
                box.append(exc)  # raised outside ctx.http (e.g. by the task itself)
            return None
        except Exception as exc:
            now = self.clock.time()
            failure = classify(exc, now, job.retry_on, self.redact)
            if failure.ignored:
                self.progress.note(failure.ignored, once=True)
            if failure.retryable and attempts <= job.retries:
                delay = failure.retry_after
                if delay is None:
                    delay = job.backoff.delay(attempts, self.rng)
                outcome = Outcome(
                    item.seq, Status.RETRY, attempts, failure.message, now + delay, item.id
                )
                return outcome, None
            return Outcome(item.seq, Status.FAILED, attempts, failure.message, None, item.id), None
        if result is None:
            return Outcome(item.seq, Status.DONE, attempts, item_id=item.id), None
        if not isinstance(result, dict):
            message = f"task returned {type(result).__name__}, expected a dict or None"
            return Outcome(item.seq, Status.FAILED, attempts, message, None, item.id), None
        row = dict(result)
        row["id"] = item.id
        return Outcome(item.seq, Status.DONE, attempts, item_id=item.id, wrote=True), row
