"""What a task receives besides its item."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from .client import PoolClient
from .clock import Clock
from .keys import Cost, Key

__all__ = ["Context"]


@dataclass(frozen=True, slots=True)
class Context:
    """Per-attempt context: ``http`` (bound to the key pool), the job name, the clock.

    ``attempt`` counts from 1.
    """

    http: PoolClient
    job: str
    attempt: int
    clock: Clock

    def lease(self, cost: Cost | None = None) -> AbstractAsyncContextManager[Key]:
        """A key and a slot for an SDK with its own HTTP stack: ``async with
        ctx.lease(Cost(tokens=500)) as key: ...`` (see :meth:`PoolClient.lease`)."""
        return self.http.lease(cost)
