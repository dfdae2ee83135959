"""One contract, every store backend: SQLite (a file, one worker) and PostgreSQL (shared).

Each test runs against both; what only one backend does (SQLite's pid checks, PostgreSQL's
leases taken over between workers) is tested beside its backend.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paceline.errors import StoreError
from paceline.item import Item, Status
from paceline.sources import Position, Record
from paceline.store import IngestResult, KeyUsage, Outcome, Store, open_store

NOW = 1_700_000_000.0
STALE = 15.0
JOB = "job"


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "job.db")
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest.fixture
def store(target: str) -> Iterator[Store]:
    s = open_store(target, JOB)
    yield s
    s.close()


def scan(store: Store, query: str) -> list[Any]:
    """Run ``query`` on the store's own database; ``items`` means this job's items."""
    if hasattr(store, "db"):
        return list(store.db.execute(query).fetchall())
    table = f"{store.schema}.items"  # type: ignore[attr-defined]
    return list(store.conn.execute(query.replace("items", table)).fetchall())  # type: ignore[attr-defined]


def by_status(store: Store) -> dict[str, int]:
    """What a full scan says; the counts must always agree with it."""
    return {s: int(n) for s, n in scan(store, "SELECT status, count(*) FROM items GROUP BY status")}


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {status: n for status, n in counts.items() if n}


def good(line: int, item_id: str, **data: object) -> Record:
    return Record(line, item_id, {"id": item_id, **data}, None, Position(line * 100, line))


def bad(line: int, error: str = "invalid JSON: Expecting value") -> Record:
    return Record(line, None, None, error, Position(line * 100, line))


def ingest(store: Store, *records: Record, exhausted: bool = False) -> IngestResult:
    return store.ingest(records, records[-1].after, exhausted, NOW)


def outcome(
    item: Item, status: Status, error: str | None = None, not_before: float | None = None
) -> Outcome:
    """The end of the attempt that followed ``item``'s claim."""
    return Outcome(item.seq, status, item.attempts + 1, error, not_before, item.id)


# -- ingest ------------------------------------------------------------------------------


def test_ingest_inserts_pending_items(store: Store) -> None:
    assert ingest(store, good(1, "a", v=1), good(2, "b", v=2)) == IngestResult(2, 0, 0)
    assert nonzero(store.counts()) == {"pending": 2}
    items = store.claim(10, "w")
    assert [(i.id, i.data, i.attempts) for i in items] == [
        ("a", {"id": "a", "v": 1}, 0),
        ("b", {"id": "b", "v": 2}, 0),
    ]


def test_ingest_may_claim_the_new_items_it_inserts(store: Store) -> None:
    chunk = (good(1, "a", v=1), good(2, "b"), good(3, "a", v="again"), bad(4), good(5, "c"))
    result = store.ingest(chunk, chunk[-1].after, False, NOW, take=2, worker_id="w",
                          budgets=[("run:r", 10)])  # fmt: skip
    taken = list(result.taken)  # a backend may take none: the worker claims as usual
    assert len(taken) <= 2
    assert (result.inserted, result.invalid, result.duplicates) == (3, 1, 1)
    claimed = taken + store.claim(10, "w")
    assert [(i.id, i.data) for i in claimed] == [
        ("a", {"id": "a", "v": 1}), ("b", {"id": "b"}), ("c", {"id": "c"}),
    ]  # fmt: skip
    assert store.counter("run:r") == len(taken)
    assert nonzero(store.counts()) == {"running": 3, "failed": 1}
    assert nonzero(store.counts()) == by_status(store)
    done = store.complete([outcome(i, Status.DONE) for i in claimed], NOW, worker_id="w")
    assert len(done) == 3


def test_an_invalid_line_becomes_a_failed_item_named_after_its_line(store: Store) -> None:
    result = ingest(store, good(1, "a"), bad(2, "not a JSON object but list"))
    assert result == IngestResult(1, 1, 0)
    assert nonzero(store.counts()) == {"pending": 1, "failed": 1}
    assert store.recent_failures() == [("@line:2", 0, "line 2: not a JSON object but list")]
    assert store.statuses_of(["@line:2", "a"]) == {"@line:2": "failed", "a": "pending"}
    [failed] = store.failures()
    assert (failed.id, failed.line, failed.invalid) == ("@line:2", 2, True)


def test_an_id_repeated_on_another_line_is_a_duplicate_not_a_second_item(store: Store) -> None:
    assert ingest(store, good(1, "a"), good(2, "b"), good(3, "a")) == IngestResult(2, 0, 1)
    assert ingest(store, good(4, "b", v="changed")) == IngestResult(0, 0, 1)
    assert nonzero(store.counts()) == {"pending": 2}
    assert store.duplicates() == (2, [(3, "a", 1), (4, "b", 2)])
    assert [i.data for i in store.claim(10, "w")] == [{"id": "a"}, {"id": "b"}]


def test_the_same_lines_ingested_again_are_not_duplicates(store: Store) -> None:
    chunk = (good(1, "a"), bad(2), good(3, "b"))
    assert ingest(store, *chunk) == IngestResult(2, 1, 0)
    assert ingest(store, *chunk) == IngestResult(0, 0, 0)  # the source was read over
    assert store.duplicates() == (0, [])
    assert nonzero(store.counts()) == {"pending": 2, "failed": 1}


def test_the_source_position_is_committed_with_the_ingested_items(target: str) -> None:
    store = open_store(target, JOB)
    assert store.source_position() == (Position(), False)
    store.ingest([good(1, "a"), good(2, "b")], Position(250, 2), False, NOW)
    assert store.source_position() == (Position(250, 2), False)
    store.ingest([], Position(250, 2), True, NOW)
    store.close()
    reopened = open_store(target, JOB, readonly=True)
    try:
        assert reopened.source_position() == (Position(250, 2), True)
        assert nonzero(reopened.counts()) == {"pending": 2}
    finally:
        reopened.close()


def test_a_chunk_that_cannot_be_stored_moves_neither_items_nor_position(store: Store) -> None:
    ingest(store, good(1, "a"))
    unstorable = Record(3, None, {"x": 1}, None, Position(300, 3))  # no id, yet no error
    with pytest.raises(Exception):  # noqa: B017, PT011 - each driver names it its own way
        store.ingest([good(2, "b"), unstorable], Position(300, 3), False, NOW)
    assert store.source_position() == (Position(100, 1), False)
    assert store.statuses_of(["a", "b"]) == {"a": "pending"}
    assert nonzero(store.counts()) == {"pending": 1}


def test_a_store_of_another_job_is_refused(target: str) -> None:
    open_store(target, "alpha").close()
    if target.endswith(".db"):  # one SQLite file holds one job
        with pytest.raises(StoreError, match="belongs to job 'alpha', not 'beta'"):
            open_store(target, "beta")
    else:  # a database holds a schema per job
        open_store(target, "beta").close()


def test_reading_a_store_that_was_never_written_says_the_job_has_not_run(target: str) -> None:
    with pytest.raises(StoreError, match="has not run yet"):
        open_store(target, "never-ran", readonly=True)


# -- claim and complete ------------------------------------------------------------------


def test_claim_takes_the_highest_priority_first_then_the_read_order(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"), good(4, "d"))
    store.expedite(["c"], NOW)
    first = store.claim(2, "w")
    assert [i.id for i in first] == ["c", "a"]
    assert store.statuses_of(["a", "b", "c", "d"]) == {
        "a": "running", "b": "pending", "c": "running", "d": "pending",
    }  # fmt: skip
    assert nonzero(store.counts()) == {"pending": 2, "running": 2}
    assert [i.id for i in store.claim(10, "w")] == ["b", "d"]
    assert store.claim(10, "w") == []
    assert nonzero(store.counts()) == {"running": 4}


def test_complete_moves_each_item_to_its_outcome(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"))
    a, b, c = store.claim(3, "w")
    counted = store.complete(
        [
            outcome(a, Status.DONE),
            outcome(b, Status.RETRY, "HTTP 503", not_before=NOW + 30),
            outcome(c, Status.FAILED, "HTTP 400 Bad Request"),
        ],
        NOW,
        worker_id="w",
    )
    assert len(counted) == 3
    assert nonzero(store.counts()) == {"done": 1, "retry": 1, "failed": 1}
    assert store.statuses_of(["a", "b", "c"]) == {"a": "done", "b": "retry", "c": "failed"}
    assert store.recent_failures() == [("c", 1, "HTTP 400 Bad Request")]


def test_a_completion_by_a_worker_that_lost_the_lease_counts_not(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"))
    a, b = store.claim(2, "old")
    store.release("old")  # e.g. taken over after the worker was given up for dead
    [again] = [i for i in store.claim(1, "new") if i.id == "a"]
    counted = store.complete(
        [outcome(a, Status.DONE), outcome(b, Status.DONE)], NOW, worker_id="old"
    )
    assert counted == []
    assert store.statuses_of(["a", "b"]) == {"a": "running", "b": "pending"}
    assert store.complete([outcome(again, Status.DONE)], NOW, worker_id="new") == [
        outcome(again, Status.DONE)
    ]
    assert nonzero(store.counts()) == {"done": 1, "pending": 1}


def test_a_failed_item_keeps_its_last_error_and_attempts(store: Store) -> None:
    ingest(store, good(1, "a"))
    [a] = store.claim(1, "w")
    store.complete([outcome(a, Status.RETRY, "HTTP 429", not_before=NOW)], NOW, worker_id="w")
    store.promote_due(NOW)
    [a] = store.claim(1, "w")
    assert a.attempts == 1
    store.complete([outcome(a, Status.FAILED, "HTTP 500 after 2 attempts")], NOW + 1, worker_id="w")
    assert store.recent_failures() == [("a", 2, "HTTP 500 after 2 attempts")]


def test_a_replayed_completion_moves_nothing_twice(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"))
    a, _b = store.claim(2, "w")
    store.complete([outcome(a, Status.DONE)], NOW, worker_id="w")
    store.complete([outcome(a, Status.FAILED, "late")], NOW, worker_id="w")  # no longer running
    assert nonzero(store.counts()) == {"done": 1, "running": 1}
    assert store.statuses_of(["a"]) == {"a": "done"}


def test_promote_due_moves_only_the_retries_whose_time_has_come(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"))
    a, b, c = store.claim(3, "w")
    assert store.next_due() is None
    store.complete(
        [
            outcome(a, Status.RETRY, "429", not_before=NOW + 10),
            outcome(b, Status.RETRY, "429", not_before=NOW + 30),
            outcome(c, Status.DONE),
        ],
        NOW,
        worker_id="w",
    )
    assert store.next_due() == NOW + 10
    assert store.promote_due(NOW + 9.9) == 0
    assert store.promote_due(NOW + 10) == 1
    assert store.statuses_of(["a", "b"]) == {"a": "pending", "b": "retry"}
    assert store.next_due() == NOW + 30
    assert nonzero(store.counts()) == {"pending": 1, "retry": 1, "done": 1}
    assert store.promote_due(NOW + 60) == 1
    assert store.next_due() is None


def test_release_gives_back_only_that_workers_items(store: Store) -> None:
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


def test_items_held_by_a_worker_that_is_gone_go_back_in_line(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"))
    store.register_worker("gone", NOW, STALE)
    store.claim(2, "gone")
    assert store.recover(NOW + 1, STALE) == 0  # its worker lives
    store.finish_worker("gone", NOW + 2, "dead", {})
    assert store.recover(NOW + 3, STALE) == 2
    assert nonzero(store.counts()) == {"pending": 3}
    assert [i.id for i in store.claim(10, "new")] == ["a", "b", "c"]


def test_retry_failed_gives_failed_items_a_fresh_budget_but_not_invalid_lines(
    store: Store,
) -> None:
    ingest(store, good(1, "a"), bad(2), good(3, "b"))
    a, b = store.claim(2, "w")
    store.complete(
        [Outcome(a.seq, Status.FAILED, 5, "HTTP 500", None, "a"), outcome(b, Status.DONE)],
        NOW,
        worker_id="w",
    )
    assert nonzero(store.counts()) == {"failed": 2, "done": 1}
    assert store.retry_failed() == 1
    assert store.statuses_of(["a", "@line:2"]) == {"a": "pending", "@line:2": "failed"}
    assert nonzero(store.counts()) == {"pending": 1, "failed": 1, "done": 1}
    [again] = store.claim(10, "w")
    assert (again.id, again.attempts) == ("a", 0)


def test_retry_invalid_forgets_bad_lines_and_reads_the_source_again(store: Store) -> None:
    ingest(store, good(1, "a"), bad(2), good(3, "b"), exhausted=True)
    assert store.retry_failed(invalid=True) == 1
    assert store.source_position() == (Position(), False)
    assert nonzero(store.counts()) == {"pending": 2}
    fixed = (good(1, "a"), good(2, "fixed"), good(3, "b"))
    assert ingest(store, *fixed) == IngestResult(1, 0, 0)  # only the fixed line is new
    assert store.duplicates() == (0, [])


def test_claims_within_budgets_count_against_them(store: Store) -> None:
    ingest(store, *(good(n, f"i{n}") for n in range(1, 11)))
    budgets = [("run:r1", 5), ("day:1", 7)]
    assert len(store.claim(3, "w", NOW, budgets)) == 3
    assert len(store.claim(10, "w", NOW, budgets)) == 2  # the run's budget of 5
    assert store.claim(10, "w", NOW, budgets) == []
    assert (store.counter("run:r1"), store.counter("day:1")) == (5, 5)
    assert len(store.claim(10, "v", NOW, [("day:1", 7)])) == 2  # the day's budget of 7
    assert store.release("w", budgets) == 5  # handed back unattempted: uncounted
    assert (store.counter("run:r1"), store.counter("day:1")) == (0, 2)


def test_expedite_puts_items_first_and_says_what_they_were(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"))
    [a] = store.claim(1, "w")
    store.complete([outcome(a, Status.FAILED, "HTTP 500")], NOW, worker_id="w")
    before = store.expedite(["c", "a", "zz"], NOW)
    assert before == {"c": "pending", "a": "failed"}
    assert [i.id for i in store.claim_expedited("w", NOW)] == ["a", "c"]
    assert nonzero(store.counts()) == {"pending": 1, "running": 2}


def test_requeue_puts_done_items_back_with_a_fresh_budget(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"), good(3, "c"))
    a, b = store.claim(2, "w")
    store.complete(
        [outcome(a, Status.DONE), outcome(b, Status.RETRY, "e", NOW)], NOW, worker_id="w"
    )
    assert store.requeue(["a", "b", "c", "zz"], NOW) == {"a": "done", "b": "retry", "c": "pending"}
    assert nonzero(store.counts()) == {"pending": 3}
    assert sorted((i.id, i.attempts) for i in store.claim(10, "w")) == [
        ("a", 0), ("b", 0), ("c", 0),
    ]  # fmt: skip


def test_iter_items_streams_items_in_read_order_with_their_status(store: Store) -> None:
    ingest(store, good(1, "a"), good(2, "b"))
    ingest(store, bad(3), good(4, "c"))
    [a] = store.claim(1, "w")
    store.complete([outcome(a, Status.DONE)], NOW, worker_id="w")
    everything = [(i.id, i.status.value, i.line) for i in store.iter_items()]
    # in the order read; within one chunk, its invalid lines come after its items
    assert everything == [
        ("a", "done", 1), ("b", "pending", 2), ("c", "pending", 4), ("@line:3", "failed", 3),
    ]  # fmt: skip
    assert [i.id for i in store.iter_items(["failed", "done"])] == ["a", "@line:3"]


def test_sink_state_and_key_usage_accumulate_across_commits(store: Store) -> None:
    assert store.sink_state() is None
    store.set_sink_state("120")
    store.set_sink_state(None)  # a sink without state changes nothing
    assert store.sink_state() == "120"
    store.complete([], NOW, worker_id="w", sink_state="240",
                   keys=[KeyUsage("fp1", "…abcd", 3, 100, 1, 0, "ready")])  # fmt: skip
    store.complete(
        [],
        NOW + 1,
        worker_id="w",
        keys=[
            KeyUsage("fp1", "…abcd", 2, 50, 1, 1, "cooling"),
            KeyUsage("fp2", "…wxyz", 1, 0, 0, 0, "ready"),
        ],
        days=[("fp1", NOW - 100, "requests", 5.0)],
        cost=0.25,
    )
    store.complete([], NOW + 2, worker_id="w", days=[("fp1", NOW - 100, "requests", 4.0)], cost=0.5)
    assert store.sink_state() == "240"
    assert store.key_usage() == [
        KeyUsage("fp1", "…abcd", 5, 150, 2, 1, "cooling"),
        KeyUsage("fp2", "…wxyz", 1, 0, 0, 0, "ready"),
    ]
    assert store.day_usage("fp1", NOW - 100) == {"requests": 5.0}  # never goes back
    assert store.cost() == pytest.approx(0.75)


# -- workers -----------------------------------------------------------------------------


def test_a_worker_heartbeats_and_is_asked_to_stop(store: Store) -> None:
    me = store.register_worker("w1", NOW, STALE)
    assert (me.worker_id, me.live) == ("w1", True)
    assert store.heartbeat("w1", NOW + 1, {"done_this_run": 3}).stop_requested is False
    [live] = store.workers(NOW + 2)
    assert (live.worker_id, live.stats) == ("w1", {"done_this_run": 3})
    assert store.request_stop(NOW + 3) == 1
    assert store.heartbeat("w1", NOW + 4, {}).stop_requested is True
    store.finish_worker("w1", NOW + 5, "stopped", {})
    assert store.workers(NOW + 6) == []
    later = store.register_worker("w2", NOW + 10, STALE)  # a stop asked before it started
    assert store.heartbeat(later.worker_id, NOW + 11, {}).stop_requested is False


def test_counts_always_match_a_scan_of_the_items(store: Store) -> None:
    rng = random.Random(20240611)
    line = 0
    chunks: list[list[Record]] = []
    claimed: list[tuple[str, Item]] = []
    seen: set[str] = set()
    for step in range(150):
        op = rng.choice(
            ["ingest", "ingest", "reingest", "claim", "claim", "complete", "complete",
             "promote", "release", "retry_failed", "expedite"]
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
            worker = rng.choice(["r1", "r2"])
            claimed += [(worker, i) for i in store.claim(rng.randint(0, 4), worker)]
        elif op == "complete" and claimed:
            # some of these were completed or released already: a replay
            worker = rng.choice(["r1", "r2"])
            mine = [i for w, i in claimed if w == worker]
            picked = rng.sample(mine, min(len(mine), rng.randint(1, 4)))
            statuses = [Status.DONE, Status.RETRY, Status.FAILED]
            store.complete(
                [
                    outcome(i, rng.choice(statuses), "e", not_before=NOW + rng.uniform(0, 20))
                    for i in picked
                ],
                NOW,
                worker_id=worker,
            )
        elif op == "promote":
            store.promote_due(NOW + rng.uniform(0, 30))
        elif op == "release":
            store.release(rng.choice(["r1", "r2"]))
        elif op == "retry_failed":
            store.retry_failed(invalid=rng.random() < 0.2)
        elif op == "expedite":
            store.expedite([f"id{rng.randrange(40)}" for _ in range(3)], NOW)
        counts = store.counts()
        assert min(counts.values()) >= 0, f"step {step} ({op})"
        assert nonzero(counts) == by_status(store), f"step {step} ({op})"
        seen.update(nonzero(counts))
    assert seen == {s.value for s in Status}  # the loop did reach every status
