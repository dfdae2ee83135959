"""The seams between the engine (and the read-only commands) and a store backend.

:class:`Store` is what a run needs; :class:`StoreReader` is what ``status``, ``failures``,
``export``, ``verify`` and the web API read. :class:`~paceline.store.sqlite.SQLiteStore`
and :class:`~paceline.store.postgres.PostgresStore` implement both; one contract suite
(``tests/contract/test_store.py``) runs against each.

Invariants every backend keeps:

* every status change moves the counts in the same transaction (status never scans);
* the source position is committed with the items read up to it;
* an item is ``running`` only under a lease (the worker that claimed it); a completion
  whose lease was lost (the worker was given up for dead, its item taken over) changes
  nothing, and a sink that shares the store's database writes no row for it;
* all times are epoch seconds; a stored due time is always finite.

Methods are synchronous: the engine calls them from its one store thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from paceline.item import Item
from paceline.sources import Position, Record

from .records import (
    Control,
    FailedItem,
    IngestResult,
    KeyUsage,
    Outcome,
    StoredItem,
    WorkerInfo,
)

__all__ = ["Budget", "RowWriter", "Store", "StoreReader"]

#: A shared claim budget: (counter name, the most it may reach). ``run:<id>`` counts the
#: items the workers of one run took (``--max-items``), ``day:<start>`` those of a local
#: day (``--per-day``).
Budget = tuple[str, int]


@runtime_checkable
class RowWriter(Protocol):
    """A sink that can write its rows inside the store's own transaction (a PostgreSQL
    table in the store's database): rows and ``done`` marks then commit together."""

    def write_in(self, connection: Any, rows: Sequence[dict[str, Any]]) -> None: ...


class StoreReader(Protocol):
    """What the read-only commands need; never writes."""

    @property
    def target(self) -> str:
        """Where the store is, for messages (a path, or a DSN without its password)."""
        ...

    def counts(self) -> dict[str, int]: ...

    def workers(self, now: float, *, live_only: bool = True) -> list[WorkerInfo]:
        """Workers that may still be alive (or every one recorded), newest first."""
        ...

    def last_run(self) -> WorkerInfo | None: ...

    def source_position(self) -> tuple[Position, bool]: ...

    def duplicates(self, limit: int = 5) -> tuple[int, list[tuple[int, str, int | None]]]: ...

    def recent_failures(self, limit: int = 5) -> list[tuple[str, int, str]]: ...

    def failures(self, limit: int | None = None) -> Iterator[FailedItem]:
        """Items failed for good, most recent first, streamed."""
        ...

    def iter_items(self, statuses: Sequence[str] = ()) -> Iterator[StoredItem]:
        """Every item (or those of ``statuses``) in the order read (within one chunk, its
        invalid lines after its items), streamed."""
        ...

    def statuses_of(self, ids: Sequence[str]) -> dict[str, str]: ...

    def iter_statuses(self, size: int) -> Iterator[list[tuple[str, str, int]]]: ...

    def key_usage(self) -> list[KeyUsage]: ...

    def day_usage(self, fingerprint: str, day_start: float) -> dict[str, float]: ...

    def cost(self) -> float: ...

    def counter(self, name: str) -> int:
        """The value of a claim budget counter (0 when never used)."""
        ...

    def close(self) -> None: ...


class Store(StoreReader, Protocol):
    """What a run needs from the store."""

    #: Whether several workers may share this store (PostgreSQL) or one holds it (SQLite).
    shared: bool

    def bind_job(self, name: str) -> None:
        """Tie the store to one job; refuse a store that belongs to another."""
        ...

    def register_worker(self, worker_id: str, now: float, stale_after: float) -> WorkerInfo:
        """Record a worker. A store that is not shared refuses a second live worker
        (:class:`~paceline.errors.JobAlreadyRunning`); a shared one joins it to the run
        of the workers alive now, or starts a new run."""
        ...

    def heartbeat(self, worker_id: str, now: float, stats: dict[str, Any]) -> Control: ...

    def finish_worker(
        self, worker_id: str, now: float, state: str, stats: dict[str, Any]
    ) -> None: ...

    def request_stop(self, now: float) -> int:
        """Ask every live worker to stop gracefully; returns how many were asked."""
        ...

    def recover(self, now: float, stale_after: float) -> int:
        """Put items whose lease holder is dead back to ``pending``; returns how many."""
        ...

    def lock_source(self, worker_id: str) -> bool:
        """Try to become the one worker reading the source (held until released or the
        worker's connection ends)."""
        ...

    def unlock_source(self) -> None: ...

    def ingest(
        self,
        records: Sequence[Record],
        after: Position,
        exhausted: bool,
        now: float,
        *,
        take: int = 0,
        worker_id: str = "",
        budgets: Sequence[Budget] = (),
    ) -> IngestResult:
        """Insert a chunk of records and the position after them, atomically. With
        ``take``, up to that many of the chunk's new items are claimed at once for
        ``worker_id`` (a backend may take none: the worker then claims as usual)."""
        ...

    def claim(
        self, limit: int, worker_id: str, now: float, budgets: Sequence[Budget] = ()
    ) -> list[Item]:
        """Take up to ``limit`` pending items, highest priority first, under a lease.
        ``budgets`` bound the claim and count it, atomically across workers."""
        ...

    def fill(self, records: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Store again the records (by seq) of items that had none: read again from the
        source, for an item to be done again after its record was dropped."""
        ...

    def claim_expedited(
        self, worker_id: str, now: float, budgets: Sequence[Budget] = ()
    ) -> list[Item]: ...

    def release(self, worker_id: str, budgets: Sequence[Budget] = ()) -> int:
        """Give back every item the worker holds (claimed, never finished)."""
        ...

    def promote_due(self, now: float) -> int: ...

    def next_due(self) -> float | None: ...

    def complete(
        self,
        outcomes: Sequence[Outcome],
        now: float,
        *,
        worker_id: str,
        rows: Sequence[dict[str, Any]] = (),
        writer: RowWriter | None = None,
        sink_state: str | None = None,
        keys: Sequence[KeyUsage] = (),
        days: Sequence[tuple[str, float, str, float]] = (),
        cost: float = 0.0,
    ) -> list[Outcome]:
        """Record finished attempts in one commit; returns the outcomes that counted
        (those whose lease still held). With ``writer``, ``rows`` go in the same
        transaction, only for items whose ``done`` mark counted."""
        ...

    def expedite(self, ids: Sequence[str], now: float) -> dict[str, str]: ...

    def retry_failed(self, *, invalid: bool = False) -> int: ...

    def requeue(self, ids: Sequence[str], now: float) -> dict[str, str]:
        """Put items back in line to be done again, done ones included, with a fresh
        retry budget (``verify --repair``, ``expedite --again``); returns each known id's
        status before. Items in flight are left alone."""
        ...

    def sink_state(self) -> str | None: ...

    def set_sink_state(self, value: str | None) -> None: ...

    def shares_database(self, sink: object) -> bool:
        """Whether ``sink`` writes into this store's database (one transaction for both)."""
        ...
