"""paceline: run large batch jobs through rate-limited APIs with pools of keys.

>>> import paceline as pl
>>> job = pl.Job("summaries", source=pl.JSONL("docs.jsonl", id="doc_id"),
...              sink=pl.SQLiteSink("out.db", table="summaries"))     # doctest: +SKIP
"""

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
    StoreError,
    TaskError,
)
from .item import Item, Status
from .job import Job
from .keys import Cost, Key, KeyPool, NoUsableKey
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
    "NoUsableKey",
    "PacelineError",
    "Permanent",
    "PostgresSink",
    "Price",
    "Retryable",
    "RunResult",
    "SQLiteSink",
    "Sink",
    "Snapshot",
    "Source",
    "Status",
    "StoreError",
    "SystemClock",
    "TaskError",
    "Upload",
]

__version__ = "0.1.0"
