"""PostgreSQL as a sink (upsert by id) and as a streamed source, on a real server."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg

import paceline as pl
from paceline.sources import Position


def test_postgres_sink_upserts_by_id_and_adds_columns(pg_dsn: str) -> None:
    sink = pl.PostgresSink(pg_dsn, table="results")
    sink.open(None)
    sink.write([{"id": "a", "n": 1, "tags": ["x"]}, {"id": "b", "n": 2, "tags": []}])
    sink.write([{"id": "a", "n": 10, "note": "again", "tags": ["y"]}])  # a replay, and more
    sink.close()
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id, n, note, tags FROM results ORDER BY id").fetchall()
    assert rows == [("a", 10, "again", ["y"]), ("b", 2, None, [])]
    assert sorted(r["id"] for r in sink.read_rows()) == ["a", "b"]


def test_sql_source_streams_a_postgres_query_and_resumes_by_count(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE users (id INT PRIMARY KEY, email TEXT)")
        conn.execute(
            "INSERT INTO users SELECT g, 'user' || g || '@example.org' "
            "FROM generate_series(1, 5000) g"
        )
    source = pl.SQL(pg_dsn, "SELECT id, email FROM users ORDER BY id")
    records = list(source.read(Position()))
    assert len(records) == 5000 and records[0].id == "1" and records[-1].id == "5000"
    rest = list(source.read(records[4099].after))
    assert [r.id for r in rest] == [str(n) for n in range(4101, 5001)]


def test_a_job_from_sqlite_into_postgres_is_safe_to_rerun(pg_dsn: str, tmp_path: Path) -> None:
    src = tmp_path / "app.db"
    db = sqlite3.connect(src)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.executemany("INSERT INTO users VALUES (?, ?)", [(n, f"user {n}") for n in range(300)])
    db.commit()
    db.close()

    def make_job() -> pl.Job:
        job = pl.Job(
            "copy",
            source=pl.SQL(src, "SELECT id, name FROM users ORDER BY id"),
            sink=pl.PostgresSink(pg_dsn, table="users_copy"),
        )

        @job.task
        async def copy(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
            return {"name": item.data["name"].upper()}

        return job

    first = make_job().run(store=tmp_path / "s.db", max_items=120)
    assert first.snapshot.done == 120
    assert make_job().run(store=tmp_path / "s.db").exit_code == 0
    assert make_job().run(store=tmp_path / "s2.db").exit_code == 0  # a fresh store: replay
    with psycopg.connect(pg_dsn) as conn:
        (count, distinct) = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM users_copy"
        ).fetchone()
        sample = conn.execute("SELECT name FROM users_copy WHERE id = '7'").fetchone()
    assert (count, distinct) == (300, 300)
    assert sample == ("USER 7",)


async def test_a_dropped_sink_connection_is_reopened_and_fails_no_row(
    pg_dsn: str, tmp_path: Path
) -> None:
    import asyncio

    job = pl.Job(
        "dropped",
        source=[{"id": f"i{n:04d}", "n": n} for n in range(3000)],
        sink=pl.PostgresSink(pg_dsn, table="rows"),
        concurrency=8,
    )

    @job.task
    async def slow(item: pl.Item, ctx: pl.Context) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"n": item.data["n"]}

    async def drop_connections() -> int:
        dropped = 0
        for _ in range(6):
            await asyncio.sleep(0.3)
            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name <> 'paceline'"
                ).fetchall()
            dropped += len(rows)
        return dropped

    run = asyncio.create_task(job.run_async(store=tmp_path / "s.db"))
    dropped = await drop_connections()
    result = await asyncio.wait_for(run, timeout=120)
    assert dropped >= 3, "the sink's connection was not dropped; the test proves nothing"
    assert (result.exit_code, result.snapshot.done, result.snapshot.failed) == (0, 3000, 0)
    with psycopg.connect(pg_dsn) as conn:
        (count, distinct) = conn.execute("SELECT count(*), count(DISTINCT id) FROM rows").fetchone()
    assert (count, distinct) == (3000, 3000)
