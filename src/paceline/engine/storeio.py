"""The store on a thread of its own, so the event loop never blocks on a database.

Calls run in order on one thread: SQLite sees one writer per connection, and a PostgreSQL
connection is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from paceline.store import Store, open_store

__all__ = ["StoreIO"]

T = TypeVar("T")


class StoreIO:
    """One store connection and the one thread that uses it."""

    def __init__(self, target: str | os.PathLike[str], job: str, *, name: str) -> None:
        self.target = target
        self.job = job
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._store: Store | None = None

    async def open(self) -> Store:
        self._store = await self.call(open_store, self.target, self.job)
        return self._store

    @property
    def opened(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> Store:
        assert self._store is not None, "the store is not open"
        return self._store

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the store thread and wait (for shutdown paths without a loop)."""
        return self._pool.submit(fn, *args).result()

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await self.call(store.close)
        self._pool.shutdown(wait=True)
