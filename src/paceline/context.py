"""What a task receives besides its item."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from .client import LeaseHandle, PoolClient
from .clock import Clock
from .keys import Cost

__all__ = ["Context"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Context:
    """Per-attempt context: ``http`` (bound to the key pool), the job name, the clock.

    ``attempt`` counts from 1.
    """

    http: PoolClient
    job: str
    attempt: int
    clock: Clock
    processes: Callable[[], Executor] | None = None

    def lease(self, cost: Cost | None = None) -> AbstractAsyncContextManager[LeaseHandle]:
        """A key and a slot for an SDK with its own HTTP stack: ``async with
        ctx.lease(Cost(tokens=500)) as lease: ...`` with ``lease.secret``, then
        ``lease.usage(response)`` (see :meth:`PoolClient.lease`)."""
        return self.http.lease(cost)

    async def run_cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy ``fn(*args)`` on the job's process pool (one process per core),
        so hashing or parsing does not stall the event loop.

        ``fn`` must be importable by name (a module-level function, also in a job file).

        >>> digest = await ctx.run_cpu(bcrypt.hashpw, password, salt)  # doctest: +SKIP
        """
        if self.processes is None:
            return fn(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.processes(), functools.partial(fn, *args))
