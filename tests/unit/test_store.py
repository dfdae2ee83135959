"""SQLiteStore: items move between statuses, counts follow, and one live run holds the job."""

from __future__ import annotations

import dataclasses
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from paceline.errors import JobAlreadyRunning, StoreError
from paceline.item import Item, Status
from paceline.sources import Position, Record
from paceline.store import IngestResult, KeyUsage, Outcome, SQLiteStore

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


# -- ingest ------------------------------------------------------------------------------


def test_ingest_inserts_pending_items(store: SQLiteStore) -> None:
    assert ingest(store, good(1, "a", v=1), good(2, "b", v=2)) == IngestResult(2, 0, 0)
    assert nonzero(store.counts()) == {"pending": 2}
    items = store.claim(10, "run")
    assert [(i.id, i.data, i.attempts) for i in items] == [
        ("a", {"id": "a", "v": 1}, 0),
        ("b", {"id": "b", "v": 2}, 0),
    ]


def test_an_invalid_line_becomes_a_failed_item_named_after_its_line(store: SQLiteStore) -> None:
    result = ingest(store, good(1, "a"), bad(2, "not a JSON object but list"))
    assert result == IngestResult(1, 1, 0)
    assert nonzero(store.counts()) == {"pending": 1, "failed": 1}
    assert store.recent_failures() == [("@line:2", 0, "line 2: not a JSON object but list")]
    assert store.statuses_of(["@line:2", "a"]) == {"@line:2": "failed", "a": "pending"}


def test_an_id_repeated_on_another_line_is_a_duplicate_not_a_second_item(
    store: SQLiteStore,
) -> None:
    assert ingest(store, good(1, "a"), good(2, "b"), good(3, "a")) == IngestResult(2, 0, 1)
    assert ingest(store, good(4, "b", v="changed")) == IngestResult(0, 0, 1)
    assert nonzero(store.counts()) == {"pending": 2}
    assert store.duplicates() == (2, [(3, "a", 1), (4, "b", 2)])
    assert [i.data for i in store.claim(10, "run")] == [{"id": "a"}, {"id": "b"}]


def test_the_same_lines_ingested_again_are_not_duplicates(store: SQLiteStore) -> None:
    chunk = (good(1, "a"), bad(2), good(3, "b"))
    assert ingest(store, *chunk) == IngestResult(2, 1, 0)
    assert ingest(store, *chunk) == IngestResult(0, 0, 0)  # the source was read over
    assert store.duplicates() == (0, [])
    assert nonzero(store.counts()) == {"pending": 2, "failed": 1}


def test_reading_a_source_again_does_not_count_its_duplicates_twice(store: SQLiteStore) -> None:
    chunk = (good(1, "a"), good(2, "a"))
    ingest(store, *chunk)
    ingest(store, *chunk)  # e.g. the file was replaced and is read from its start
    assert store.duplicates()[0] == 1


def test_the_source_position_is_committed_with_the_ingested_items(tmp_path: Path) -> None:
    path = tmp_path / "job.db"
    store = SQLiteStore(path)
    assert store.source_position() == (Position(), False)
    store.ingest([good(1, "a"), good(2, "b")], Position(250, 2), False, NOW)
    assert store.source_position() == (Position(250, 2), False)
    store.ingest([], Position(250, 2), True, NOW)
    store.close()

    reopened = SQLiteStore(path)
    try:
        assert reopened.source_position() == (Position(250, 2), True)
    finally:
        reopened.close()


def test_a_chunk_that_cannot_be_stored_moves_neither_items_nor_position(
    store: SQLiteStore,
) -> None:
    ingest(store, good(1, "a"))
    unstorable = Record(3, None, {"x": 1}, None, Position(300, 3))  # no id, yet no error
    with pytest.raises(sqlite3.IntegrityError):
        store.ingest([good(2, "b"), unstorable], Position(300, 3), False, NOW)
    assert store.source_position() == (Position(100, 1), False)
    assert store.statuses_of(["a", "b"]) == {"a": "pending"}
    assert nonzero(store.counts()) == {"pending": 1}


# -- claim and complete ------------------------------------------------------------------


def test_claim_takes_the_highest_priority_first_then_the_read_order(store: SQLiteStore) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"), good(4, "d"))
    # priorities are changed in the store while a job runs; nothing else sets them yet
    store.db.execute("UPDATE items SET priority = 5 WHERE id = 'c'")
    store.db.execute("UPDATE items SET priority = 1 WHERE id = 'b'")

    first = store.claim(2, "run")
    assert [(i.id, i.priority) for i in first] == [("c", 5.0), ("b", 1.0)]
    assert store.statuses_of(["a", "b", "c", "d"]) == {
        "a": "pending",
        "b": "running",
        "c": "running",
        "d": "pending",
    }
    assert nonzero(store.counts()) == {"pending": 2, "running": 2}
    assert [i.id for i in store.claim(10, "run")] == ["a", "d"]
    assert store.claim(10, "run") == []
    assert nonzero(store.counts()) == {"running": 4}


def test_complete_moves_each_item_to_its_outcome(store: SQLiteStore) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"))
    a, b, c = store.claim(3, "run")
    store.complete(
        [
            outcome(a, Status.DONE),
            outcome(b, Status.RETRY, "HTTP 503", not_before=NOW + 30),
            outcome(c, Status.FAILED, "HTTP 400 Bad Request"),
        ],
        NOW,
    )
    assert nonzero(store.counts()) == {"done": 1, "retry": 1, "failed": 1}
    assert store.statuses_of(["a", "b", "c"]) == {"a": "done", "b": "retry", "c": "failed"}
    assert store.recent_failures() == [("c", 1, "HTTP 400 Bad Request")]


def test_a_failed_item_keeps_its_last_error_and_attempts(store: SQLiteStore) -> None:
    ingest(store, good(1, "a"))
    [a] = store.claim(1, "run")
    store.complete([outcome(a, Status.RETRY, "HTTP 429", not_before=NOW)], NOW)
    store.promote_due(NOW)
    [a] = store.claim(1, "run")
    assert a.attempts == 1
    store.complete([outcome(a, Status.FAILED, "HTTP 500 after 2 attempts")], NOW + 1)
    assert store.recent_failures() == [("a", 2, "HTTP 500 after 2 attempts")]


def test_a_replayed_completion_moves_nothing_twice(store: SQLiteStore) -> None:
    ingest(store, good(1, "a"), good(2, "b"))
    a, _b = store.claim(2, "run")
    store.complete([outcome(a, Status.DONE)], NOW)
    store.complete([outcome(a, Status.FAILED, "late")], NOW)  # a is no longer running
    assert nonzero(store.counts()) == {"done": 1, "running": 1}
    assert store.statuses_of(["a"]) == {"a": "done"}


def test_promote_due_moves_only_the_retries_whose_time_has_come(store: SQLiteStore) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"))
    a, b, c = store.claim(3, "run")
    assert store.next_due() is None
    store.complete(
        [
            outcome(a, Status.RETRY, "429", not_before=NOW + 10),
            outcome(b, Status.RETRY, "429", not_before=NOW + 30),
            outcome(c, Status.DONE),
        ],
        NOW,
    )
    assert store.next_due() == NOW + 10
    assert store.promote_due(NOW + 9.9) == 0
    assert store.promote_due(NOW + 10) == 1
    assert store.statuses_of(["a", "b"]) == {"a": "pending", "b": "retry"}
    assert store.next_due() == NOW + 30
    assert nonzero(store.counts()) == {"pending": 1, "retry": 1, "done": 1}
    assert store.promote_due(NOW + 60) == 1
    assert store.next_due() is None


def test_recover_returns_running_items_to_pending(store: SQLiteStore) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"))
    store.claim(2, "dead-run")
    assert store.recover() == 2
    assert nonzero(store.counts()) == {"pending": 3}
    assert [i.id for i in store.claim(10, "new-run")] == ["a", "b", "c"]


def test_release_gives_back_only_that_runs_items(store: SQLiteStore) -> None:
    ingest(store, *(good(n, f"i{n}") for n in range(1, 6)))
    mine = store.claim(2, "mine")
    theirs = store.claim(2, "theirs")
    assert store.release("mine") == 2
    assert store.statuses_of([i.id for i in mine + theirs]) == {
        mine[0].id: "pending",
        mine[1].id: "pending",
        theirs[0].id: "running",
        theirs[1].id: "running",
    }
    assert nonzero(store.counts()) == {"pending": 3, "running": 2}
    assert store.release("mine") == 0


def test_retry_failed_gives_failed_items_a_fresh_budget_but_not_invalid_lines(
    store: SQLiteStore,
) -> None:
    ingest(store, good(1, "a"), bad(2), good(3, "b"))
    a, b = store.claim(2, "run")
    store.complete([Outcome(a.seq, Status.FAILED, 5, "HTTP 500"), outcome(b, Status.DONE)], NOW)
    assert nonzero(store.counts()) == {"failed": 2, "done": 1}

    assert store.retry_failed() == 1
    assert store.statuses_of(["a", "@line:2"]) == {"a": "pending", "@line:2": "failed"}
    assert nonzero(store.counts()) == {"pending": 1, "failed": 1, "done": 1}
    [again] = store.claim(10, "run")
    assert (again.id, again.attempts) == ("a", 0)


def test_sink_state_round_trips_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "job.db"
    store = SQLiteStore(path)
    assert store.sink_state() is None
    store.set_sink_state("120")
    assert store.sink_state() == "120"
    store.set_sink_state(None)  # a sink without state changes nothing
    assert store.sink_state() == "120"
    store.complete([], NOW, sink_state="240")
    store.close()
    reopened = SQLiteStore(path)
    try:
        assert reopened.sink_state() == "240"
    finally:
        reopened.close()


def test_key_usage_accumulates_across_commits(store: SQLiteStore) -> None:
    store.complete([], NOW, keys=[KeyUsage("fp1", "…abcd", 3, 100, 1, 0, "ready")])
    store.complete(
        [],
        NOW + 1,
        keys=[
            KeyUsage("fp1", "…abcd", 2, 50, 1, 1, "cooling"),
            KeyUsage("fp2", "…wxyz", 1, 0, 0, 0, "ready"),
        ],
    )
    assert store.key_usage() == [
        KeyUsage("fp1", "…abcd", 5, 150, 2, 1, "cooling"),
        KeyUsage("fp2", "…wxyz", 1, 0, 0, 0, "ready"),
    ]


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


# -- the counts table --------------------------------------------------------------------


def test_counts_always_match_a_scan_of_the_items(store: SQLiteStore) -> None:
    rng = random.Random(20240611)
    line = 0
    chunks: list[list[Record]] = []
    claimed: list[Item] = []
    seen: set[str] = set()
    for step in range(250):
        op = rng.choice(
            ["ingest", "ingest", "reingest", "claim", "claim", "complete", "complete",
             "promote", "recover", "release", "retry_failed"]
        )  # fmt: skip
        if op == "ingest":
            chunk = []
            for _ in range(rng.randint(1, 5)):
                line += 1
                if rng.random() < 0.15:
                    chunk.append(bad(line))
                else:  # a small id space, so duplicates happen
                    record = good(line, f"id{rng.randrange(40)}")
                    if rng.random() < 0.1:
                        record = dataclasses.replace(record, skip=True)  # needs no work
                    chunk.append(record)
            chunks.append(chunk)
            ingest(store, *chunk)
        elif op == "reingest" and chunks:
            ingest(store, *rng.choice(chunks))
        elif op == "claim":
            claimed += store.claim(rng.randint(0, 4), rng.choice(["r1", "r2"]))
        elif op == "complete" and claimed:
            # some of these were completed, recovered or released already: a replay
            picked = rng.sample(claimed, rng.randint(1, min(4, len(claimed))))
            statuses = [Status.DONE, Status.RETRY, Status.FAILED]
            store.complete(
                [
                    outcome(i, rng.choice(statuses), "e", not_before=NOW + rng.uniform(0, 20))
                    for i in picked
                ],
                NOW,
            )
        elif op == "promote":
            store.promote_due(NOW + rng.uniform(0, 30))
        elif op == "recover":
            store.recover()
        elif op == "release":
            store.release(rng.choice(["r1", "r2"]))
        elif op == "retry_failed":
            store.retry_failed()
        counts = store.counts()
        assert min(counts.values()) >= 0, f"step {step} ({op})"
        assert nonzero(counts) == by_status(store), f"step {step} ({op})"
        seen.update(nonzero(counts))
    assert seen == {s.value for s in Status}  # the loop did reach every status
