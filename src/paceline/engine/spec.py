"""What the engine needs of a job: a structural type, so the engine does not import
:mod:`paceline.job` (the job imports the engine to run itself)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from paceline.context import Context
from paceline.cost import Price
from paceline.item import Item
from paceline.keys import KeyPool
from paceline.retry import Backoff
from paceline.sinks import Batch, Sink
from paceline.sources import Source

__all__ = ["JobSpec", "TaskFn"]

TaskFn = Callable[[Item, Context], Awaitable[dict[str, Any] | None] | dict[str, Any] | None]


class JobSpec(Protocol):
    """A job's definition, as :class:`paceline.Job` holds it."""

    name: str
    source: Source
    sink: Sink
    keys: KeyPool | None
    retries: int
    max_concurrency: int
    timeout: float | None
    http_timeout: float
    backoff: Backoff
    retry_on: tuple[type[BaseException], ...]
    batch: Batch
    prices: dict[str, Price]
    needs: Callable[[Item], bool] | None
    priority: Callable[[Item], float] | None
    secret_fields: frozenset[str]
    task_fn: TaskFn | None
