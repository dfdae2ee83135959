"""Reading the source into the store, in chunks, with the position committed alongside.

Reading runs on a thread of its own (a slow source must not hold up claims, commits or
the heartbeat); inserting runs on the store thread. On a shared store one worker at a
time reads (it holds the store's source lock); the others wait for the lock, so the
reading goes on from the committed position when the reader stops or dies.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

from paceline.clock import Clock
from paceline.item import Item
from paceline.sources import IterableSource, Position, Record
from paceline.store import IngestResult

from .progress import Progress
from .state import RunState
from .storeio import StoreIO

if TYPE_CHECKING:
    from .spec import JobSpec

__all__ = ["INGEST_CHUNK", "Ingestor", "describe_exception"]

INGEST_CHUNK = 2_000
#: How often a worker that does not read the source asks for the source lock.
LOCK_EVERY = 2.0


def describe_exception(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _with_starts(records: Iterator[Record], start: Position) -> Iterator[Record]:
    """Each record with the position reading must start from to meet it again (where the
    record before it ended), so an item can be read again from the source later."""
    for record in records:
        yield replace(record, start=start)
        start = record.after


class Ingestor:
    """Streams the job's source into the store."""

    def __init__(
        self,
        job: JobSpec,
        io: StoreIO,
        progress: Progress,
        state: RunState,
        clock: Clock,
        worker_id: str,
        redact: Callable[[str], str],
        take: Callable[[], tuple[int, list[tuple[str, int]]]] | None = None,
        deliver: Callable[[list[Item]], Awaitable[None]] | None = None,
    ) -> None:
        self.job = job
        # Items of a chunk can be claimed as they go in (no claim to run afterwards)
        # when nothing else orders the work: ``take`` says how many the workers want,
        # and under which budgets; ``deliver`` hands them over.
        self.take = take if job.priority is None else None
        self.deliver = deliver
        self.io = io
        self.progress = progress
        self.state = state
        self.clock = clock
        self.worker_id = worker_id
        self.redact = redact

    async def run(self) -> None:
        store = self.io.store
        try:
            if store.shared and not await self._take_lock():
                return
            try:
                await self._read()
            finally:
                if store.shared:
                    await self.io.call(store.unlock_source)
        except Exception as exc:
            self.state.fail(exc)

    async def _take_lock(self) -> bool:
        """Wait to be the reader; ``False`` when the source was read to its end meanwhile."""
        store = self.io.store
        while self.state.taking:
            if await self.io.call(store.lock_source, self.worker_id):
                return True
            _, exhausted = await self.io.call(store.source_position)
            if exhausted:
                self.progress.source_done = True
                return False
            await self.clock.sleep(LOCK_EVERY)
        return False

    async def _read(self) -> None:
        io, job = self.io, self.job
        position, exhausted = await io.call(io.store.source_position)
        if exhausted and isinstance(job.source, IterableSource):
            self.progress.source_done = True
            return  # an iterable may not be readable twice; it was read to its end
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(1, thread_name_prefix="paceline-source")
        try:
            records = _with_starts(job.source.read(position), position)
            while self.state.taking:
                chunk = await loop.run_in_executor(reader, self._read_chunk, records)
                exhausted = len(chunk) < INGEST_CHUNK
                after = chunk[-1].after if chunk else None
                take, budgets = self.take() if self.take is not None else (0, [])
                result = await io.call(self._store_chunk, chunk, after, exhausted, take, budgets)
                self._count(chunk, result)
                if result.taken and self.deliver is not None:
                    await self.deliver(list(result.taken))
                if exhausted:
                    self.progress.source_done = True
                    return
        finally:
            reader.shutdown(wait=False, cancel_futures=True)

    def _count(self, chunk: list[Record], result: IngestResult) -> None:
        progress = self.progress
        progress.add("pending", result.inserted)  # the taken move on when delivered
        progress.add("failed", result.invalid)
        progress.add("skipped", result.skipped)
        progress.duplicates += result.duplicates
        for record in chunk:
            if record.error is not None:
                progress.error(f"line {record.line}", record.error)
        self.state.progress.set()

    def _read_chunk(self, records: Iterator[Record]) -> list[Record]:
        """The next records, with the job's ``needs`` and ``priority`` applied (user code,
        run here on the source thread)."""
        chunk = list(itertools.islice(records, INGEST_CHUNK))
        needs, priority = self.job.needs, self.job.priority
        if needs is None and priority is None:
            return self._keep_secrets_out(chunk)
        out = []
        for r in chunk:
            if r.error is None and r.id is not None and r.data is not None:
                item = Item(r.id, r.data)
                try:
                    skip = needs is not None and not needs(item)
                    rank = float(priority(item)) if priority is not None else 0.0
                except Exception as exc:
                    error = self.redact(f"needs/priority raised {describe_exception(exc)}")
                    r = replace(r, error=error)
                else:
                    r = replace(r, skip=skip, priority=rank)
            out.append(r)
        return self._keep_secrets_out(out)

    def _keep_secrets_out(self, chunk: list[Record]) -> list[Record]:
        """The job's ``secret_fields`` never reach the store: the task gets them from the
        source again when it runs (see :mod:`.refill`)."""
        secret = self.job.secret_fields
        if not secret:
            return chunk
        return [
            r
            if r.data is None
            else replace(r, data={k: v for k, v in r.data.items() if k not in secret})
            for r in chunk
        ]

    def _store_chunk(
        self,
        chunk: list[Record],
        after: Position | None,
        exhausted: bool,
        take: int,
        budgets: list[tuple[str, int]],
    ) -> IngestResult:
        store = self.io.store
        if after is None:
            after = store.source_position()[0]
        return store.ingest(
            chunk, after, exhausted, self.clock.time(), take=take, worker_id=self.worker_id,
            budgets=budgets,
        )  # fmt: skip
