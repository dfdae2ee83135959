"""Durable job state: SQLite by default, PostgreSQL to share a job between workers.

:func:`open_store` picks the backend from the target: a ``postgresql://`` DSN or a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from paceline.errors import ConfigError

from .protocol import Budget, RowWriter, Store, StoreReader
from .records import (
    EXPEDITED,
    Control,
    FailedItem,
    IngestResult,
    KeyUsage,
    Outcome,
    RunInfo,
    StoredItem,
    WorkerInfo,
    invalid_id,
    is_invalid_id,
)
from .sqlite import SQLiteStore

__all__ = [
    "EXPEDITED",
    "Budget",
    "Control",
    "FailedItem",
    "IngestResult",
    "KeyUsage",
    "Outcome",
    "RowWriter",
    "RunInfo",
    "SQLiteStore",
    "Store",
    "StoreReader",
    "StoredItem",
    "WorkerInfo",
    "check_target",
    "describe_target",
    "invalid_id",
    "is_invalid_id",
    "is_postgres",
    "open_store",
    "store_exists",
]

StoreTarget = str | os.PathLike[str]


def is_postgres(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def describe_target(target: StoreTarget) -> str:
    """``target`` fit for a message: a path, or a DSN without its password."""
    if is_postgres(target):
        from .postgres import redacted_dsn

        return redacted_dsn(str(target))
    return str(target)


def check_target(target: StoreTarget) -> None:
    """Refuse a URL of another kind than PostgreSQL's: a mistake, not a SQLite path (it
    would become folders)."""
    text = str(target)
    if "://" in text and not is_postgres(text):
        scheme = text.split("://", 1)[0]
        raise ConfigError(f"store {scheme}://…: use a SQLite path or a postgresql:// DSN")


def store_exists(target: StoreTarget) -> bool:
    """Whether a SQLite store file exists (a PostgreSQL store is asked when opened)."""
    check_target(target)
    return True if is_postgres(target) else Path(target).exists()


def open_store(target: StoreTarget, job: str, *, readonly: bool = False) -> Store:
    """The store at ``target`` for job ``job``: a SQLite file or a PostgreSQL database.

    Read-only opening of a store that does not exist raises
    :class:`~paceline.errors.StoreError` ("the job has not run yet").
    """
    check_target(target)
    if is_postgres(target):
        from .postgres import PostgresStore

        store: Store = PostgresStore(str(target), job, readonly=readonly)
    else:
        store = SQLiteStore(target, readonly=readonly)
    if not readonly:
        try:
            store.bind_job(job)
        except BaseException:
            store.close()
            raise
    return store
