"""What the store holds, as backend-neutral frozen records.

Conversion to and from rows happens only inside the backends (``sqlite``, ``postgres``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paceline.item import Item, Status

__all__ = [
    "EXPEDITED",
    "Control",
    "FailedItem",
    "IngestResult",
    "KeyUsage",
    "Outcome",
    "RunInfo",
    "StoredItem",
    "WorkerInfo",
    "invalid_id",
    "is_invalid_id",
]

#: The priority an expedited item gets: above any a job's ``priority`` gives.
EXPEDITED = 1e15


def invalid_id(line: int) -> str:
    """The id given to a source line that is not a valid item."""
    return f"@line:{line}"


def is_invalid_id(item_id: str) -> bool:
    """Whether ``item_id`` names an invalid source line (an item with nothing to run:
    expediting or retrying it alone does nothing; ``retry --invalid`` reads it again)."""
    return item_id.startswith("@line:") and item_id[6:].isdigit()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt: ``done``, ``retry`` (with its due time) or ``failed``."""

    seq: int
    status: Status
    attempts: int
    error: str | None = None
    not_before: float | None = None
    item_id: str = ""
    wrote: bool = False


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one chunk of source records did to the store; ``taken``: items of the chunk
    claimed at once for the worker that read it (counted in ``inserted`` too)."""

    inserted: int
    invalid: int
    duplicates: int
    skipped: int = 0
    taken: tuple[Item, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker process on the job, as recorded in the store.

    Workers that overlap in time share a ``run_id``: the run a ``--max-items`` budget is
    counted against. On the SQLite store there is one worker per run.
    """

    worker_id: str
    run_id: str
    pid: int
    host: str
    started_at: float
    heartbeat: float
    finished_at: float | None
    state: str
    stats: dict[str, Any]

    @property
    def live(self) -> bool:
        return self.finished_at is None


#: The name the first wave used for a worker's record.
RunInfo = WorkerInfo


@dataclass(frozen=True, slots=True)
class Control:
    """What a heartbeat brings back: whether ``paceline stop`` asked this worker to stop,
    and whether the store had given the worker up for dead (its items were taken over)."""

    stop_requested: bool = False
    lost: bool = False


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """Counters for one key, as kept in the store (masked, by fingerprint)."""

    fingerprint: str
    masked: str
    requests: int = 0
    tokens: int = 0
    rate_limited: int = 0
    errors: int = 0
    state: str = "ready"
    until: float | None = None
    reason: str | None = None
    info: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class FailedItem:
    """An item that failed for good: its id, attempts, last error and source line."""

    id: str
    attempts: int
    error: str
    line: int | None
    updated_at: float | None
    invalid: bool  # a source line that was not a valid item (no data to run)


@dataclass(frozen=True, slots=True)
class StoredItem:
    """One item as ``paceline export`` streams it."""

    seq: int
    id: str
    status: Status
    attempts: int
    error: str | None
    line: int | None
    wrote: bool
