"""What only the PostgreSQL store does: many workers on one job, on a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import paceline as pl
from paceline.item import Status
from paceline.sources import Position, Record
from paceline.store import Outcome, open_store
from paceline.store.postgres import PostgresStore

NOW = 1_700_000_000.0
STALE = 15.0


def records(n: int, start: int = 1) -> list[Record]:
    return [
        Record(i, f"i{i:05d}", {"id": f"i{i:05d}", "n": i}, None, Position(i * 10, i))
        for i in range(start, start + n)
    ]


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[list[PostgresStore]]:
    """Three connections to one job's store, as three workers would hold."""
    opened = [open_store(pg_dsn, "job") for _ in range(3)]
    yield opened  # type: ignore[misc]
    for s in opened:
        s.close()


def test_workers_claiming_at_once_never_get_the_same_item(stores: list[PostgresStore]) -> None:
    first = stores[0]
    first.ingest(records(3000), Position(30000, 3000), True, NOW)
    claimed: dict[str, list[str]] = {}

    def claim_all(store: PostgresStore, worker: str) -> None:
        mine: list[str] = []
        while batch := store.claim(37, worker, NOW):
            mine += [i.id for i in batch]
        claimed[worker] = mine

    threads = [threading.Thread(target=claim_all, args=(s, f"w{n}")) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in claimed.values() for i in ids]
    assert len(everything) == len(set(everything)) == 3000
    assert all(claimed.values())  # every worker got some: they did claim side by side
    assert first.counts()["running"] == 3000


def test_a_worker_whose_heartbeat_stopped_loses_its_items_to_the_others(
    stores: list[PostgresStore],
) -> None:
    a, b, _ = stores
    a.ingest(records(10), Position(100, 10), True, NOW)
    a.register_worker("a", NOW, STALE)
    b.register_worker("b", NOW, STALE)
    held = a.claim(4, "a", NOW)
    a.heartbeat("a", NOW + 5, {})
    b.heartbeat("b", NOW + 19, {})
    assert b.recover(NOW + 19, STALE) == 0  # a beat 14 s ago: still alive
    assert b.recover(NOW + 21, STALE) == 4  # 16 s: gone, its items back in line
    assert [w.worker_id for w in b.workers(NOW + 21)] == ["b"]
    taken = b.claim(10, "b", NOW + 21)
    assert {i.id for i in held} <= {i.id for i in taken}
    # a comes back: its late answers change nothing, and it learns it was given up
    late = [Outcome(i.seq, Status.DONE, 1, item_id=i.id) for i in held]
    assert a.complete(late, NOW + 22, worker_id="a") == []
    assert a.heartbeat("a", NOW + 22, {}).lost is True
    assert a.statuses_of([i.id for i in held]) == {i.id: "running" for i in held}


def test_a_worker_that_joins_a_live_one_shares_its_run(stores: list[PostgresStore]) -> None:
    a, b, c = stores
    first = a.register_worker("a", NOW, STALE)
    second = b.register_worker("b", NOW + 1, STALE)
    assert second.run_id == first.run_id == "a"
    a.finish_worker("a", NOW + 2, "finished", {})
    b.finish_worker("b", NOW + 3, "finished", {})
    assert c.register_worker("c", NOW + 4, STALE).run_id == "c"  # nobody alive: a new run


def test_one_worker_at_a_time_reads_the_source(pg_dsn: str, stores: list[PostgresStore]) -> None:
    a, b, _ = stores
    assert a.lock_source("a") is True
    assert b.lock_source("b") is False
    a.close()  # the reader dies: its session lock goes with it (once its backend exits)
    deadline = time.monotonic() + 10
    while not b.lock_source("b") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.lock_source("b") is True
    stores[0] = open_store(pg_dsn, "job")  # type: ignore[assignment]


def test_a_dropped_connection_is_reopened_and_the_call_goes_through(
    pg_dsn: str, stores: list[PostgresStore]
) -> None:
    store = stores[0]
    store.ingest(records(5), Position(50, 5), True, NOW)
    pid = store.conn.info.backend_pid
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert len(store.claim(10, "w", NOW)) == 5
    assert store.conn.info.backend_pid != pid


def test_a_sink_in_the_store_database_commits_with_the_done_marks(pg_dsn: str) -> None:
    store = open_store(pg_dsn, "job")
    sink = pl.PostgresSink(pg_dsn, table="results")
    other_db = pl.PostgresSink(pg_dsn.rsplit("/", 1)[0] + "/postgres", table="results")
    try:
        assert store.shares_database(sink) and not store.shares_database(other_db)
        store.ingest(records(4), Position(40, 4), True, NOW)
        a, b, c, d = store.claim(4, "w", NOW)
        store.release("w")
        store.claim(1, "thief", NOW)  # takes a: w's lease on it is gone
        w_items = store.claim(3, "w", NOW)
        assert {i.id for i in w_items} == {b.id, c.id, d.id}
        outcomes = [Outcome(i.seq, Status.DONE, 1, item_id=i.id, wrote=True) for i in (a, b, c, d)]
        rows: list[dict[str, Any]] = [
            {"id": a.id, "v": 1},
            {"id": b.id, "v": 2},
            {"id": c.id, "v": "not a number"},  # the column is BIGINT: refused
            {"id": d.id, "v": 4},
        ]
        sink.write([{"id": "seed", "v": 0}])  # the table exists with v BIGINT
        counted = store.complete(outcomes, NOW, worker_id="w", rows=rows, writer=sink)
        assert {(o.item_id, o.status) for o in counted} == {
            (b.id, Status.DONE), (c.id, Status.FAILED), (d.id, Status.DONE),
        }  # fmt: skip
        with psycopg.connect(pg_dsn) as conn:
            got = dict(conn.execute("SELECT id, v FROM results").fetchall())
        assert got == {"seed": 0, b.id: 2, d.id: 4}  # no row for a (lease lost) nor c
        assert store.statuses_of([a.id, b.id, c.id, d.id]) == {
            a.id: "running", b.id: "done", c.id: "failed", d.id: "done",
        }  # fmt: skip
        [failure] = store.failures()
        assert failure.id == c.id and "refused" in failure.error
    finally:
        sink.close()
        store.close()
