"""Shared quota: four worker processes on one job and one key pool, meters shared or not.

The simulated provider runs in its own process (``paceline sim``) with 4 keys × 600
requests/minute (40 requests/s in all) and latency ``lognormal:1,0.5`` (median 1 s, mean
1.13 s), so ~45 requests must be in flight across the workers to use the keys in full.
Four ``paceline run JOBFILE --store postgresql://…`` processes share one job (a fresh
PostgreSQL database per measurement; items claimed with SKIP LOCKED; a ``PostgresSink``
in the same database) and the same four keys, side by side in two ways:

* ``redis`` — ``--limiter redis://…?prefix=…``: every key's meters live in Redis (Lua
  scripts), so the four workers together keep to each key's limit;
* ``local`` — no ``--limiter``: each worker has meters of its own and believes it has the
  whole pool to itself, so the four together ask up to four times the limit and learn the
  rest from the answers (429s, and headers saying a key's window is spent).

After a warm-up, over a steady window, the figures come from the simulator's own counters
(``GET /_sim/stats`` read at the window's start and end; ``POST /_sim/reset`` is not used,
since it would also empty the simulator's meters and hand out a fresh minute's quota in the
middle of the run): OK answers per second ÷ the sum of the keys' limits, and 429s ÷
requests received; and the highest OK answers per second over 1 and 10 seconds of the
whole run (warm-up included), ÷ the limit. The workers' own counts (requests in flight,
workers each) are read from the store's ``workers`` table during the window. The window
should span whole minutes: the simulator's limits are sliding one-minute windows.

    python benchmarks/shared_quota.py                      # both modes, ~4 minutes
    python benchmarks/shared_quota.py --repeat 3           # ~11 minutes
    python benchmarks/shared_quota.py --modes redis --warmup 20 --window 160
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

TARGET_UTILIZATION = 0.98
TARGET_429_SHARE = 0.005
JOB_NAME = "sharedquota"
STOP_GRACE = 3  # seconds a stopped worker gives what is in flight

PG_ADMIN = os.environ.get("PACELINE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("PACELINE_REDIS_URL", "redis://127.0.0.1:6379/0")

# The job every worker runs: one OpenAI-style request per item through ctx.http, automatic
# concurrency, the README's default retry budget, rows into PostgreSQL beside the store.
JOB = """
import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    "{name}",
    source=pl.JSONL(HERE / "items.jsonl", id="id"),
    sink=pl.PostgresSink(os.environ["BENCH_PG"], table="results"),
    keys=pl.KeyPool(os.environ["BENCH_KEYS"].split(","), rpm=int(os.environ["BENCH_RPM"])),
)
URL = os.environ["SIM_URL"] + "/v1/chat/completions"


@job.task
async def call(item, ctx):
    body = {{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": item.id}}]}}
    r = await ctx.http.post(URL, json=body)
    r.raise_for_status()
    return {{"answer": r.json()["choices"][0]["message"]["content"]}}
"""


@dataclass(frozen=True)
class Settings:
    workers: int
    keys: int
    rate: int  # requests per minute per key
    latency: str
    warmup: float
    window: float
    seed: int

    @property
    def limit_per_s(self) -> float:
        return self.keys * self.rate / 60.0


@dataclass
class Measurement:
    mode: str
    limit_per_s: float
    ok_per_s: float = 0.0
    requests: int = 0
    rate_limited: int = 0
    errors: int = 0
    per_second: list[float] = field(default_factory=list)  # ok/s, second by second
    run_requests: int = 0  # from the start to the window's end
    run_rate_limited: int = 0
    in_flight: list[float] = field(default_factory=list)  # all workers together, sampled
    workers: list[list[int]] = field(default_factory=list)  # each worker's size, sampled
    items: dict[str, int] = field(default_factory=dict)  # item statuses when stopped
    exits: list[int | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def utilization(self) -> float:
        return self.ok_per_s / self.limit_per_s

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0

    @property
    def run_share_429(self) -> float:
        return self.run_rate_limited / self.run_requests if self.run_requests else 0.0

    def peak(self, seconds: int) -> float:
        """The highest ok/s over ``seconds`` consecutive seconds of the run (warm-up
        included: in-process meters overshoot most at the start), ÷ the limit."""
        run = self.per_second
        spans = [run[i : i + seconds] for i in range(len(run) - seconds + 1)]
        return max((sum(x) / seconds for x in spans), default=0.0) / self.limit_per_s


def secrets_for(n: int) -> list[str]:
    # Distinct last four characters: the simulator counts per masked key (…last four).
    return [f"bench-shared-secret-{i:04d}-k{i:03d}" for i in range(n)]


@contextlib.contextmanager
def simulator(keys: list[str], s: Settings) -> Iterator[str]:
    """``paceline sim`` in its own process (so the workers' CPU does not slow it)."""
    cmd = [
        sys.executable, "-m", "paceline", "sim", "--port", "0", "--keys", ",".join(keys),
        "--rpm", str(s.rate), "--latency", s.latency, "--seed", str(s.seed),
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "serving on" not in line:
                raise RuntimeError(f"paceline sim did not start: {line!r}")
            yield line.split("serving on", 1)[1].split()[0]
        except BaseException:
            log.seek(0)
            print(f"paceline sim stderr:\n{log.read()[-2000:]}", file=sys.stderr)
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A PostgreSQL database of our own for one measurement, dropped after it."""
    name = f"paceline_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def read_workers(dsn: str) -> list[dict[str, Any]]:
    """Each live worker's stats, as it last wrote them to the store (about every second)."""
    schema = f"paceline_{JOB_NAME}"
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            rows = conn.execute(
                f'SELECT stats FROM "{schema}".workers WHERE finished_at IS NULL'
            ).fetchall()
    except psycopg.Error:
        return []  # not created yet
    return [json.loads(r[0]) for r in rows if r[0]]


def item_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f'SELECT status, count(*) FROM "paceline_{JOB_NAME}".items GROUP BY status'
        ).fetchall()
    return {status: int(n) for status, n in rows}


def stats(client: httpx.Client, url: str) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    r = client.get(f"{url}/_sim/stats")
    r.raise_for_status()
    return (t0 + time.monotonic()) / 2, r.json()


def measure(mode: str, s: Settings) -> Measurement:
    m = Measurement(mode, s.limit_per_s)
    keys = secrets_for(s.keys)
    # More items than can finish in the run: the window ends long before the source does.
    n_items = int(s.limit_per_s * (s.warmup + s.window + 30) * 2) + 1_000
    with (
        tempfile.TemporaryDirectory(prefix="paceline-shared-") as tmp,
        simulator(keys, s) as url,
        fresh_database() as dsn,
    ):
        folder = Path(tmp)
        with (folder / "items.jsonl").open("w") as f:
            for i in range(n_items):
                f.write(f'{{"id": "item-{i:07d}"}}\n')
        job = folder / "job.py"
        job.write_text(JOB.format(name=JOB_NAME))
        env = {
            **os.environ, "SIM_URL": url, "BENCH_PG": dsn, "BENCH_KEYS": ",".join(keys),
            "BENCH_RPM": str(s.rate),
        }  # fmt: skip
        env.pop("PACELINE_LIMITER", None)
        args = ["run", str(job), "--store", dsn, "--progress", "none", "--grace", str(STOP_GRACE)]
        prefix = f"bench-shared-{uuid.uuid4().hex[:8]}:"
        if mode == "redis":
            args += ["--limiter", f"{REDIS}?prefix={prefix}"]
        procs = []
        try:
            for n in range(s.workers):
                log = (folder / f"worker-{n}.log").open("w")
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "paceline", *args],
                        cwd=folder,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            observe(m, url, dsn, s)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(STOP_GRACE + 20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                m.exits.append(p.returncode)
        for n, code in enumerate(m.exits):
            if code not in (0, 130):
                tail = (folder / f"worker-{n}.log").read_text()[-600:]
                m.notes.append(f"worker {n} exited {code}: {tail}")
        m.items = item_counts(dsn)
    if mode == "redis":
        forget(prefix)
    return m


def forget(prefix: str) -> None:
    """Delete the meters a measurement left in Redis (its own prefix only)."""
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        for name in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(name)
    finally:
        client.close()


def observe(m: Measurement, url: str, dsn: str, s: Settings) -> None:
    """Every second: the simulator's counters; in the window, also the workers' sizes."""
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=30, limits=fresh) as client:
        start = time.monotonic()
        last_t, last = stats(client, url)
        first = last
        begin: tuple[float, dict[str, Any]] | None = None
        second = 1
        while True:
            time.sleep(max(0.0, start + second - time.monotonic()))
            second = max(second + 1, int(time.monotonic() - start) + 1)
            t, now = stats(client, url)
            m.per_second.append((now["total"]["ok"] - last["total"]["ok"]) / (t - last_t))
            last_t, last = t, now
            elapsed = t - start
            if begin is None and elapsed >= s.warmup:
                begin = (t, now)
            elif begin is not None:
                if second % 2 == 0:
                    workers = read_workers(dsn)
                    m.in_flight.append(sum(int(w.get("in_flight") or 0) for w in workers))
                    m.workers.append([int(w.get("workers") or 0) for w in workers])
                if elapsed >= s.warmup + s.window:
                    break
    assert begin is not None
    (t0, a), (t1, b) = begin, (t, now)
    m.ok_per_s = (b["total"]["ok"] - a["total"]["ok"]) / (t1 - t0)
    m.requests = b["total"]["requests"] - a["total"]["requests"]
    m.rate_limited = b["total"]["rate_limited"] - a["total"]["rate_limited"]
    m.errors = b["total"]["errors"] - a["total"]["errors"]
    m.run_requests = b["total"]["requests"] - first["total"]["requests"]
    m.run_rate_limited = b["total"]["rate_limited"] - first["total"]["rate_limited"]


def describe(m: Measurement) -> str:
    wire = statistics.mean(m.in_flight) if m.in_flight else 0.0
    sizes = f"{m.workers[0]}→{m.workers[-1]}" if m.workers else "?"
    ramp = " ".join(f"{r:.0f}" for r in m.per_second)
    notes = f"\n      notes: {m.notes}" if m.notes else ""
    return (
        f"    {m.mode:<6} {m.utilization:6.3f} of limit  {m.ok_per_s:6.2f} ok/s  "
        f"429 {m.share_429:6.2%} ({m.rate_limited}/{m.requests})  errors {m.errors}  "
        f"in flight {wire:5.1f} (all workers)  workers each {sizes}  exits {m.exits}  "
        f"items {m.items}\n"
        f"      peak ok/s over 1 s {m.peak(1):.2f}× the limit, over 10 s {m.peak(10):.2f}×; "
        f"whole run (start to window end): 429 {m.run_share_429:.2%} "
        f"({m.run_rate_limited}/{m.run_requests})\n"
        f"      ok/s second by second: {ramp}{notes}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="redis,local", help="comma-separated: redis, local")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--rate", type=int, default=600, help="requests/minute per key")
    parser.add_argument("--latency", default="lognormal:1,0.5", help="as for paceline sim")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds (a whole minute: the sim's window)"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    modes = [x.strip() for x in args.modes.split(",") if x.strip()]
    for mode in modes:
        if mode not in ("redis", "local"):
            parser.error(f"unknown mode {mode!r} (known: redis, local)")
    s = Settings(
        args.workers, args.keys, args.rate, args.latency, args.warmup, args.window, args.seed
    )
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; {s.workers} worker "
        f"processes; {s.keys} keys × {s.rate}/minute = {s.limit_per_s:g} requests/s in all; "
        f"latency {s.latency}; warm-up {s.warmup:g} s, window {s.window:g} s; "
        f"repeat {args.repeat}",
        flush=True,
    )
    runs: dict[str, list[Measurement]] = {}
    for rep in range(args.repeat):
        for mode in modes:
            seeded = Settings(**{**s.__dict__, "seed": s.seed + rep})
            m = measure(mode, seeded)
            runs.setdefault(mode, []).append(m)
            print(describe(m) + (f"  [run {rep + 1}]" if args.repeat > 1 else ""), flush=True)

    print()
    print(
        "| limiter | throughput / limit | 429 share | peak 1 s / 10 s ÷ limit (whole run) "
        "| 429 share, whole run | runs (throughput · 429) |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for mode, ms in runs.items():
        util = statistics.median(m.utilization for m in ms)
        share = statistics.median(m.share_429 for m in ms)
        peak1 = statistics.median(m.peak(1) for m in ms)
        peak10 = statistics.median(m.peak(10) for m in ms)
        whole = statistics.median(m.run_share_429 for m in ms)
        shown = " ; ".join(f"{m.utilization:.3f} · {m.share_429:.2%}" for m in ms)
        print(
            f"| {mode} | {util:.3f} | {share:.2%} | {peak1:.2f} / {peak10:.2f} | {whole:.2%} "
            f"| {shown} |"
        )
    if "redis" in runs:
        ms = runs["redis"]
        util = statistics.median(m.utilization for m in ms)
        share = statistics.median(m.share_429 for m in ms)
        met = util >= TARGET_UTILIZATION and share <= TARGET_429_SHARE
        print(
            f"\ntarget (redis: ≥ {TARGET_UTILIZATION} of the limit, ≤ {TARGET_429_SHARE:.1%} "
            f"429s): {'met' if met else 'NOT met'}"
        )
    if args.json:
        rows = [
            {**m.__dict__, "utilization": m.utilization, "share_429": m.share_429}
            for ms in runs.values()
            for m in ms
        ]
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
