"""paceline: run large batch jobs through rate-limited APIs with pools of keys.

>>> import paceline as pl
>>> job = pl.Job("summaries", source=pl.JSONL("docs.jsonl", id="doc_id"),
...              sink=pl.SQLiteSink("out.db", table="summaries"))     # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import Clock, FakeClock, SystemClock
    from .context import Context
    from .cost import Price
    from .engine import RunResult, Snapshot
    from .errors import (
        ConfigError,
        JobAlreadyRunning,
        PacelineError,
        Permanent,
        Retryable,
        SinkError,
        StoreError,
        TaskError,
    )
    from .item import Item, Status
    from .job import Job
    from .keys import Cost, Key, KeyPool, NoUsableKey
    from .limits import Limit
    from .postgres import PostgresSink
    from .retry import Backoff
    from .sinks import Batch, CallableSink, JSONLSink, Sink, SQLiteSink
    from .sources import CSV, JSONL, SQL, IterableSource, Source
    from .upload import Upload

__all__ = [
    "CSV",
    "JSONL",
    "SQL",
    "Backoff",
    "Batch",
    "CallableSink",
    "Clock",
    "ConfigError",
    "Context",
    "Cost",
    "FakeClock",
    "Item",
    "IterableSource",
    "JSONLSink",
    "Job",
    "JobAlreadyRunning",
    "Key",
    "KeyPool",
    "Limit",
    "NoUsableKey",
    "PacelineError",
    "Permanent",
    "PostgresSink",
    "Price",
    "Retryable",
    "RunResult",
    "SQLiteSink",
    "Sink",
    "SinkError",
    "Snapshot",
    "Source",
    "Status",
    "StoreError",
    "SystemClock",
    "TaskError",
    "Upload",
]

__version__ = "0.1.0"

# The public names load on first use, so `import paceline` (and the CLI's start, where a
# signal must already find its handler) does not pay for every module at once.
_LAZY = {
    "Backoff": "retry",
    "Batch": "sinks",
    "CSV": "sources",
    "CallableSink": "sinks",
    "Clock": "clock",
    "ConfigError": "errors",
    "Context": "context",
    "Cost": "keys",
    "FakeClock": "clock",
    "Item": "item",
    "IterableSource": "sources",
    "JSONL": "sources",
    "JSONLSink": "sinks",
    "Job": "job",
    "JobAlreadyRunning": "errors",
    "Key": "keys",
    "KeyPool": "keys",
    "Limit": "limits",
    "NoUsableKey": "keys",
    "PacelineError": "errors",
    "Permanent": "errors",
    "PostgresSink": "postgres",
    "Price": "cost",
    "Retryable": "errors",
    "RunResult": "engine",
    "SQL": "sources",
    "SQLiteSink": "sinks",
    "Sink": "sinks",
    "SinkError": "errors",
    "Snapshot": "engine",
    "Source": "sources",
    "Status": "item",
    "StoreError": "errors",
    "SystemClock": "clock",
    "TaskError": "errors",
    "Upload": "upload",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'paceline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
