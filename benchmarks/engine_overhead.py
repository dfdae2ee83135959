"""Engine overhead: a no-op task over many items, durable SQLite store and sink.

Each measurement runs in a fresh subprocess, so its peak memory (ru_maxrss) is its own.
Side by side in the same run:

* ``paceline``  — ``paceline.Job`` with a JSONL source, a no-op ``async`` task and an
  ``SQLiteSink``; state in the SQLite store (WAL, synchronous=FULL).
* ``script``    — what a throw-away script does to be crash-safe: for each line, call the
  task, insert the row and commit (one transaction per item).
* ``floor``     — the least work that reads the same file and writes the same rows, with
  no state at all: one bulk insert per 10,000 rows. Nothing can be faster than this.

Then whole ``paceline run`` processes, as a user starts them (interpreter start, job file,
ingest, run, summary), over the same kind of file: one on the SQLite store, and 1, 2 and 4
side by side on one PostgreSQL store (``--store postgresql://…``) with a ``PostgresSink``
in the same database (rows and done marks in one transaction). items/s = items / wall
time from the first start to the last exit.

    python benchmarks/engine_overhead.py                 # 200k items, then memory 100k vs 1M
    python benchmarks/engine_overhead.py --items 50000 --memory-sizes 20000,100000 --repeat 1
    python benchmarks/engine_overhead.py --only processes --process-items 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_source(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"item-{i:08d}", "n": i, "text": "x" * 40}) + "\n")


def run_paceline(src: Path, work: Path) -> None:
    import paceline as pl

    job = pl.Job(
        "bench", source=pl.JSONL(src, id="id"), sink=pl.SQLiteSink(work / "out.db", table="rows")
    )

    @job.task
    async def noop(item: pl.Item, ctx: pl.Context) -> dict[str, int]:
        return {"n": item.data["n"]}

    result = job.run(store=work / "store.db")
    assert result.snapshot.done == result.snapshot.total, result.snapshot


def run_script(src: Path, work: Path) -> None:
    import asyncio

    async def noop(data: dict[str, int]) -> dict[str, int]:
        return {"n": data["n"]}

    async def main() -> None:
        db = sqlite3.connect(work / "out.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE rows (id TEXT PRIMARY KEY, n INTEGER)")
        with src.open() as f:
            for line in f:
                data = json.loads(line)
                row = await noop(data)
                db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?)", (data["id"], row["n"]))
                db.commit()
        db.close()

    asyncio.run(main())


def run_floor(src: Path, work: Path) -> None:
    db = sqlite3.connect(work / "out.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE rows (id TEXT PRIMARY KEY, n INTEGER)")
    batch: list[tuple[str, int]] = []
    with src.open("rb") as f:
        for line in f:
            data = json.loads(line)
            batch.append((data["id"], data["n"]))
            if len(batch) == 10_000:
                with db:
                    db.executemany("INSERT INTO rows VALUES (?, ?)", batch)
                batch.clear()
    with db:
        db.executemany("INSERT INTO rows VALUES (?, ?)", batch)
    db.close()


RUNNERS = {"paceline": run_paceline, "script": run_script, "floor": run_floor}

PROCESS_JOB = """
import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
if os.environ.get("BENCH_PG"):
    sink = pl.PostgresSink(os.environ["BENCH_PG"], table="rows")
else:
    sink = pl.SQLiteSink(HERE / "out.db", table="rows")
job = pl.Job("bench", source=pl.JSONL(os.environ["BENCH_SRC"], id="id"), sink=sink)


@job.task
async def noop(item, ctx):
    return {"n": item.data["n"]}
"""


def fresh_database(admin_dsn: str) -> str:
    import uuid

    import psycopg

    name = f"paceline_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_dsn: str, dsn: str) -> None:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')


def measure_processes(src: Path, items: int, workers: int, admin_dsn: str | None) -> float:
    """items/s of ``workers`` whole ``paceline run`` processes on one store."""
    with tempfile.TemporaryDirectory(dir=src.parent) as work:
        job = Path(work) / "job.py"
        job.write_text(PROCESS_JOB)
        env = {**os.environ, "BENCH_SRC": str(src)}
        args = [sys.executable, "-m", "paceline", "run", str(job), "--progress", "none"]
        dsn = None
        if admin_dsn is not None:
            dsn = fresh_database(admin_dsn)
            env["BENCH_PG"] = dsn
            args += ["--store", dsn]
        try:
            start = time.perf_counter()
            procs = [
                subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, cwd=work)
                for _ in range(workers)
            ]
            for proc in procs:
                if proc.wait(timeout=600) != 0:
                    raise SystemExit(f"paceline run exited {proc.returncode}")
            seconds = time.perf_counter() - start
        finally:
            if dsn is not None and admin_dsn is not None:
                drop_database(admin_dsn, dsn)
    return items / seconds


def bench_processes(base: Path, items: int, repeat: int, admin_dsn: str | None) -> None:
    src = base / "process.jsonl"
    make_source(src, items)
    print(f"\nwhole `paceline run` processes, no-op task, {items:,} items (median of {repeat}):")
    setups = [("SQLite store, 1 process", 1, None)]
    if admin_dsn is not None:
        setups += [(f"PostgreSQL store, {n} process(es)", n, admin_dsn) for n in (1, 2, 4)]
    else:
        print("  (no PostgreSQL at PACELINE_PG_DSN: PostgreSQL figures skipped)")
    for label, workers, dsn in setups:
        runs = [measure_processes(src, items, workers, dsn) for _ in range(repeat)]
        shown = ", ".join(f"{r:,.0f}" for r in runs)
        print(f"  {label:<30} {statistics.median(runs):>9,.0f} items/s   (runs: {shown})")


def postgres_admin() -> str | None:
    dsn = os.environ.get("PACELINE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg

        psycopg.connect(dsn, connect_timeout=3).close()
    except Exception:
        return None
    return dsn


def child(kind: str, src: str, work: str) -> None:
    start = time.perf_counter()
    RUNNERS[kind](Path(src), Path(work))
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024}))


def measure(kind: str, src: Path, items: int, limit: int | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=src.parent) as work:
        cmd = [sys.executable, __file__, "--child", kind, str(src), work]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=limit).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["items_per_s"] = items / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--script-items",
        type=int,
        default=20_000,
        help="the per-item-commit script is slow: run it on fewer items",
    )
    parser.add_argument("--memory-sizes", default="100000,1000000")
    parser.add_argument("--process-items", type=int, default=100_000)
    parser.add_argument(
        "--only", choices=["engine", "processes"], default=None, help="run one part only"
    )
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "WORK"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="paceline-bench-") as tmp:
        base = Path(tmp)
        print(
            f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
            f"SQLite {sqlite3.sqlite_version}"
        )
        if args.only == "processes":
            bench_processes(base, args.process_items, args.repeat, postgres_admin())
            return
        print(f"\nthroughput, no-op task, {args.items:,} items (median of {args.repeat}):")
        src = base / "items.jsonl"
        make_source(src, args.items)
        small = base / "script.jsonl"
        make_source(small, args.script_items)
        rates: dict[str, float] = {}
        for kind in ("floor", "paceline", "script"):
            path, n = (small, args.script_items) if kind == "script" else (src, args.items)
            runs = [measure(kind, path, n)["items_per_s"] for _ in range(args.repeat)]
            rates[kind] = statistics.median(runs)
            shown = ", ".join(f"{r:,.0f}" for r in runs)
            print(f"  {kind:<9} {rates[kind]:>10,.0f} items/s   (runs: {shown}; {n:,} items)")
        print(f"  paceline / floor  = {rates['paceline'] / rates['floor']:.2f}")
        print(f"  paceline / script = {rates['paceline'] / rates['script']:.1f}x")

        sizes = [int(s) for s in args.memory_sizes.split(",")]
        print("\npeak memory (RSS) of a whole paceline run by number of items:")
        peaks = []
        for size in sizes:
            path = base / f"mem-{size}.jsonl"
            make_source(path, size)
            r = measure("paceline", path, size)
            peaks.append(r["peak_mib"])
            print(
                f"  {size:>9,} items: {r['peak_mib']:6.1f} MiB peak, "
                f"{r['items_per_s']:,.0f} items/s"
            )
            path.unlink()
        print(f"  ratio {sizes[-1]:,} / {sizes[0]:,} items: {peaks[-1] / peaks[0]:.2f}")
        if args.only is None:
            bench_processes(base, args.process_items, args.repeat, postgres_admin())


if __name__ == "__main__":
    main()
