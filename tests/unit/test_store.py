"""What only the SQLite store does: one file per job, one live run holding it (pid and
heartbeat checks). The behaviour every store shares is in ``tests/contract/test_store.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from paceline.errors import JobAlreadyRunning, StoreError
from paceline.item import Item, Status
from paceline.sources import Position, Record
from paceline.store import IngestResult, Outcome, SQLiteStore

NOW = 1_700_000_000.0
STALE_AFTER = 15.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "job.db")
    s.bind_job("job")
    yield s
    s.close()


def good(line: int, item_id: str, **data: object) -> Record:
    return Record(line, item_id, {"id": item_id, **data}, None, Position(line * 100, line))


def bad(line: int, error: str = "invalid JSON: Expecting value") -> Record:
    return Record(line, None, None, error, Position(line * 100, line))


def ingest(store: SQLiteStore, *records: Record, exhausted: bool = False) -> IngestResult:
    return store.ingest(records, records[-1].after, exhausted, NOW)


def by_status(store: SQLiteStore) -> dict[str, int]:
    """What a full scan says; the counts table must always agree with it."""
    return dict(store.db.execute("SELECT status, count(*) FROM items GROUP BY status"))


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {status: n for status, n in counts.items() if n}


def outcome(
    item: Item, status: Status, error: str | None = None, not_before: float | None = None
) -> Outcome:
    """The end of the attempt that followed ``item``'s claim."""
    return Outcome(item.seq, status, item.attempts + 1, error, not_before, item.id)


# -- opening and binding -----------------------------------------------------------------


def test_bind_job_refuses_a_store_of_another_job(tmp_path: Path) -> None:
    path = tmp_path / "job.db"
    first = SQLiteStore(path)
    first.bind_job("alpha")
    first.close()

    second = SQLiteStore(path)
    try:
        second.bind_job("alpha")  # the same job may reopen it
        with pytest.raises(StoreError, match="belongs to job 'alpha', not 'beta'"):
            second.bind_job("beta")
    finally:
        second.close()


def test_a_readonly_store_on_a_missing_path_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "never-ran.db"
    with pytest.raises(StoreError, match="has not run yet") as info:
        SQLiteStore(path, readonly=True)
    assert str(path) in str(info.value)
    assert not path.exists()


def test_a_file_that_is_not_a_store_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        SQLiteStore(path)


def test_a_readonly_store_reads_what_a_writer_committed(tmp_path: Path) -> None:
    writer = SQLiteStore(tmp_path / "job.db")
    ingest(writer, good(1, "a"), good(2, "b"))
    reader = SQLiteStore(tmp_path / "job.db", readonly=True)
    try:
        assert nonzero(reader.counts()) == {"pending": 2}
    finally:
        reader.close()
        writer.close()


# -- runs --------------------------------------------------------------------------------


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two connections to one store, as two processes running the same job would hold."""
    first, second = SQLiteStore(tmp_path / "job.db"), SQLiteStore(tmp_path / "job.db")
    yield first, second
    first.close()
    second.close()


def finished_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_register_worker_refuses_while_another_live_run_heartbeats(
    two_stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    first, second = two_stores
    first.register_worker("run-1", NOW, STALE_AFTER)
    first.heartbeat("run-1", NOW + 10, {"done": 3})

    with pytest.raises(JobAlreadyRunning, match=f"pid {os.getpid()}"):
        second.register_worker("run-2", NOW + 20, STALE_AFTER)
    live = second.live_run(NOW + 20, STALE_AFTER)
    assert live is not None
    assert (live.run_id, live.stats) == ("run-1", {"done": 3})


def test_register_worker_succeeds_once_the_other_run_finished(
    two_stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    first, second = two_stores
    first.register_worker("run-1", NOW, STALE_AFTER)
    first.finish_worker("run-1", NOW + 5, "finished", {})
    second.register_worker("run-2", NOW + 6, STALE_AFTER)
    last = second.last_run()
    assert last is not None
    assert (last.run_id, last.state) == ("run-2", "running")


def test_register_worker_ignores_a_run_whose_process_is_gone(
    two_stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_stores
    dead = finished_pid()
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: dead)
        first.register_worker("run-1", NOW, STALE_AFTER)

    assert second.live_run(NOW + 1, STALE_AFTER) is None
    second.register_worker("run-2", NOW + 1, STALE_AFTER)
    live = second.live_run(NOW + 1, STALE_AFTER)
    assert live is not None
    assert (live.run_id, live.pid) == ("run-2", os.getpid())


def test_a_run_on_another_host_counts_as_gone_once_its_heartbeat_is_stale(
    two_stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    first, second = two_stores
    first.register_worker("run-1", NOW, STALE_AFTER)
    first.db.execute("UPDATE runs SET host='another-host'")  # its pid means nothing here
    first.heartbeat("run-1", NOW + 100, {})
    with pytest.raises(JobAlreadyRunning):
        second.register_worker("run-2", NOW + 100 + STALE_AFTER - 1, STALE_AFTER)
    second.register_worker("run-2", NOW + 100 + STALE_AFTER + 1, STALE_AFTER)
    last = second.last_run()
    assert last is not None
    assert last.run_id == "run-2"


def test_a_busy_run_on_this_host_holds_the_job_while_its_process_lives(
    two_stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    # A run whose store thread is busy (a slow source or sink) may miss heartbeats; a
    # second run must still be refused, or both would write the same items.
    first, second = two_stores
    first.register_worker("run-1", NOW, STALE_AFTER)  # this very (live) process
    with pytest.raises(JobAlreadyRunning):
        second.register_worker("run-2", NOW + 10 * STALE_AFTER, STALE_AFTER)


@pytest.mark.parametrize("target", ["mysql://app:hunter2@db/jobs", "redis://127.0.0.1:6379/0"])
def test_a_store_url_of_another_kind_is_refused_not_made_into_folders(
    tmp_path: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paceline.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    from paceline.store import open_store

    with pytest.raises(ConfigError, match="SQLite path or a postgresql:// DSN") as info:
        open_store(target, "job")
    assert "hunter2" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
