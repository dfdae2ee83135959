"""Reading a claimed item's record again from the source, when the store has not all of it.

The store drops an item's record once the item is done (it may hold what should not stay
on disk), and never holds the job's ``secret_fields``. An item done again (``verify
--repair``, ``expedite --again``) or a job with secret fields therefore reads its record
from the source at the position the store kept, on the source's own thread. An item no
longer where it was (the source changed) fails with a message saying so.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from paceline.item import Item, Status
from paceline.sources import Record, read_back
from paceline.store import Outcome

from .attempt import Result
from .spec import JobSpec
from .storeio import StoreIO

__all__ = ["Refiller"]


class Refiller:
    """Completes claimed items from the source before they run."""

    def __init__(self, job: JobSpec, io: StoreIO) -> None:
        self.job = job
        self.io = io
        self._reader: ThreadPoolExecutor | None = None

    def needed(self, items: list[Item]) -> bool:
        return bool(self.job.secret_fields) or any(not i.whole for i in items)

    async def complete(self, items: list[Item]) -> tuple[list[Item], list[Result]]:
        """The items ready to run, and the outcomes of those that cannot be read again."""
        wanted = [i for i in items if self.job.secret_fields or not i.whole]
        if not wanted:
            return items, []
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="paceline-refill")
        loop = asyncio.get_running_loop()
        keys = [(i.id, i.source_at, i.line) for i in wanted]
        found = await loop.run_in_executor(self._reader, read_back, self.job.source, keys)
        ready: list[Item] = []
        failed: list[Result] = []
        stored: list[tuple[int, dict[str, object]]] = []
        asked = {i.seq for i in wanted}
        for item in items:
            if item.seq not in asked:
                ready.append(item)
                continue
            record = found.get(item.id)
            if record is None or record.data is None:
                where = f"line {item.line}" if item.line else "its place"
                message = (
                    f"the source no longer has this item at {where} (it changed since the "
                    "item was read): fix the source, then `paceline retry --invalid`"
                )
                outcome = Outcome(item.seq, Status.FAILED, item.attempts, message, None, item.id)
                failed.append((outcome, None))
                continue
            ready.append(self._merge(item, record))
            if not item.whole:
                stored.append((item.seq, self._storable(record)))
        if stored:
            await self.io.call(self.io.store.fill, stored)
        return ready, failed

    def _merge(self, item: Item, record: Record) -> Item:
        assert record.data is not None
        if item.whole:  # the store's record, with the secret fields from the source
            secret = self.job.secret_fields
            extra = {k: v for k, v in record.data.items() if k in secret}
            return replace(item, data={**item.data, **extra})
        return replace(item, data=dict(record.data), whole=True)

    def _storable(self, record: Record) -> dict[str, object]:
        assert record.data is not None
        return {k: v for k, v in record.data.items() if k not in self.job.secret_fields}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)
