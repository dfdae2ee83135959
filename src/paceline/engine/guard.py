"""Signals from the limiter that a task's own ``except`` cannot swallow.

A request that waits for a key can learn that the run is stopping, that every key is out
of quota, or that no usable key is left. These reach the task as exceptions; a task with a
broad ``except Exception`` would catch one and return a row as if the item were done. So
each attempt carries a box, the client drops every such signal in it on the way out, and
the engine reads the box after the task returns, whatever the task did with the exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from paceline.client import PoolClient
from paceline.keys import NoUsableKey
from paceline.limiter import QuotaWait, Stopping

__all__ = ["CONTROL", "GuardedClient", "signal_box"]

#: What the limiter raises to steer the run rather than to fail one item.
CONTROL = (Stopping, QuotaWait, NoUsableKey)

#: The current attempt's box (set by the engine around each attempt).
signal_box: ContextVar[list[BaseException] | None] = ContextVar("signal_box", default=None)


def _record(exc: BaseException) -> None:
    box = signal_box.get()
    if box is not None:
        box.append(exc)


class GuardedClient(PoolClient):
    """``ctx.http``: the pool client, with the limiter's signals recorded per attempt."""

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().request(*args, **kwargs)
        except CONTROL as exc:
            _record(exc)
            raise

    @asynccontextmanager
    async def lease(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async with super().lease(*args, **kwargs) as key:
                yield key
        except CONTROL as exc:
            _record(exc)
            raise
