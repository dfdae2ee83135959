"""Job files the end-to-end tests run through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A job that sends each item through the simulated OpenAI-style API; the sim's URL comes
# from SIM_URL so a rerun can point at another server.
SIM_JOB = """
import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    "work",
    source=pl.JSONL(HERE / "items.jsonl", id="id"),
    sink={sink},
    keys=pl.KeyPool({keys!r}),
    retries=8,
    concurrency={concurrency},
    backoff=pl.Backoff(base=0.05, cap=0.5),
)


@job.task
async def work(item, ctx):
    text = "item " + item.id + " " + item.data["text"]
    body = {{"model": "m", "messages": [{{"role": "user", "content": text}}]}}
    r = await ctx.http.post(os.environ["SIM_URL"] + "/v1/chat/completions", json=body)
    r.raise_for_status()
    return {{"n": item.data["n"], "summary": r.json()["choices"][0]["message"]["content"]}}
"""

KEYS = ["sk-test-aaaaaaaaaaaaaaaa0001", "sk-test-bbbbbbbbbbbbbbbb0002"]


def write_sim_job(
    folder: Path, items: int, *, sink: str = "jsonl", concurrency: int | None = 8
) -> Path:
    """Write items.jsonl and job.py into ``folder``; returns the job file (``concurrency``
    None: automatic)."""
    with (folder / "items.jsonl").open("w") as f:
        for n in range(items):
            f.write(f'{{"id": "it-{n:05d}", "n": {n}, "text": "words of item {n}"}}\n')
    sink_code = {
        "jsonl": 'pl.JSONLSink(HERE / "out.jsonl")',
        "sqlite": 'pl.SQLiteSink(HERE / "out.db", table="results")',
    }[sink]
    job = folder / "job.py"
    job.write_text(SIM_JOB.format(sink=sink_code, keys=KEYS, concurrency=concurrency))
    return job


def expected_summary(item_id: str, n: int) -> str:
    return f"Summary: item {item_id} words of item {n}"


# A job many workers share: its state in PostgreSQL (--store), its rows in a table of the
# same database, so rows and done marks commit together. The task takes a little time and
# its answer is a function of the item, so a row can be checked.
WORKER_JOB = """
import asyncio
import os
import random
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    "shared",
    source=pl.JSONL(HERE / "items.jsonl", id="id"),
    sink={sink},
    concurrency={concurrency},
)


@job.task
async def work(item, ctx):
    await asyncio.sleep(random.uniform({low}, {high}))
    return {{"n": item.data["n"], "square": item.data["n"] ** 2, "host": os.uname().nodename}}
"""


def write_worker_job(
    folder: Path,
    items: int,
    *,
    sink: str = "postgres",
    concurrency: int = 8,
    latency: tuple[float, float] = (0.005, 0.02),
) -> Path:
    """Write items.jsonl and job.py for a job shared by workers; returns the job file."""
    with (folder / "items.jsonl").open("w") as f:
        for n in range(items):
            f.write(f'{{"id": "it-{n:05d}", "n": {n}}}\n')
    sink_code = {
        "postgres": 'pl.PostgresSink(os.environ["PG_DSN"], table="results")',
        "jsonl": 'pl.JSONLSink(HERE / "out.jsonl")',
    }[sink]
    job = folder / "job.py"
    job.write_text(
        WORKER_JOB.format(sink=sink_code, concurrency=concurrency, low=latency[0], high=latency[1])
    )
    return job


# Workers sharing a pool of keys on the simulated provider: the store and the rows in
# PostgreSQL (PG_DSN), the keys' meters where --limiter says.
SHARED_KEYS_JOB = """
import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    "sharedkeys",
    source=pl.JSONL(HERE / "items.jsonl", id="id"),
    sink=pl.PostgresSink(os.environ["PG_DSN"], table="results"),
    keys=pl.KeyPool({keys!r}, rpm={rpm}),
    concurrency=2,  # few claimed at a time: the items spread over the workers
    retries=8,
    backoff=pl.Backoff(base=0.2, cap=2),
)


@job.task
async def work(item, ctx):
    body = {{"model": "m", "messages": [{{"role": "user", "content": item.id}}]}}
    r = await ctx.http.post(os.environ["SIM_URL"] + "/v1/chat/completions", json=body)
    r.raise_for_status()
    return {{"answer": r.json()["choices"][0]["message"]["content"]}}
"""

SHARED_KEYS = ["sk-test-shared-aaaaaaaa0001", "sk-test-shared-bbbbbbbb0002"]


def write_shared_keys_job(folder: Path, items: int, *, rpm: int) -> Path:
    with (folder / "items.jsonl").open("w") as f:
        for n in range(items):
            f.write(f'{{"id": "it-{n:05d}"}}\n')
    job = folder / "job.py"
    job.write_text(SHARED_KEYS_JOB.format(keys=SHARED_KEYS, rpm=rpm))
    return job


def start_worker(
    job: Path, env: dict[str, str], *args: str, command: str = "run"
) -> subprocess.Popen[str]:
    """``paceline run JOB`` as a worker process of its own (no terminal, no stdin)."""
    return subprocess.Popen(
        [sys.executable, "-m", "paceline", command, str(job), "--progress", "none", *args],
        cwd=job.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_workers(workers: list[subprocess.Popen[str]], timeout: float = 180) -> None:
    """Wait for every worker to end well; kill any left when something fails."""
    try:
        for w in workers:
            _, err = w.communicate(timeout=timeout)
            assert w.returncode == 0, err
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
