"""``paceline demo``: a whole job against the built-in simulated provider.

It writes a few hundred sample documents to a JSONL file, starts the simulated
OpenAI-style API on a free loopback port, and summarises every document through it with
four keys, showing the live dashboard. No server, key or network is needed.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from .context import Context
from .item import Item
from .job import Job
from .keys import Cost, KeyPool
from .report import LiveReporter, LogReporter, Reporter
from .sinks import SQLiteSink
from .sources import JSONL

__all__ = ["run_demo"]

# Words the sample documents are made of (the simulated model summarises them).
_WORDS = (
    "quota", "latency", "token", "request", "window", "key", "batch", "retry", "limit",
    "provider", "throughput", "migration", "document", "summary", "archive", "ledger",
)  # fmt: skip


def write_documents(path: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for n in range(1, count + 1):
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 80)))
            f.write(
                json.dumps({"doc_id": f"doc-{n:05d}", "title": f"Document {n}", "text": words})
                + "\n"
            )


def build_job(workdir: Path, base_url: str, n_keys: int) -> Job:
    keys = KeyPool(
        [f"sk-demo-{n:02d}-{'x' * 24}{n:04d}" for n in range(1, n_keys + 1)],
        rpm=1200,
        tpm=400_000,
    )
    job = Job(
        "demo",
        source=JSONL(workdir / "documents.jsonl", id="doc_id"),
        sink=SQLiteSink(workdir / "results.db", table="summaries"),
        keys=keys,
        retries=6,
        http_timeout=10.0,
    )

    @job.task
    async def summarize(item: Item, ctx: Context) -> dict[str, Any]:
        text = item.data["text"]
        body = {
            "model": "gpt-4o-mini",
            "max_tokens": 60,
            "messages": [{"role": "user", "content": f"Summarise: {text}"}],
        }
        r = await ctx.http.post(
            f"{base_url}/v1/chat/completions", json=body, cost=Cost(tokens=len(text) // 4 + 60)
        )
        r.raise_for_status()
        answer = r.json()
        return {
            "title": item.data["title"],
            "summary": answer["choices"][0]["message"]["content"],
            "tokens": answer["usage"]["total_tokens"],
        }

    job.home = workdir
    return job


def run_demo(*, items: int, n_keys: int, workdir: Path, progress: str) -> int:
    """Run the demo; returns the exit code."""
    from .sim import KeyLimits, SimConfig, SimServer, parse_latency

    # Each demo starts afresh: the previous demo's store and results are replaced.
    for name in (".paceline", "results.db", "results.db-wal", "results.db-shm"):
        target = workdir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    write_documents(workdir / "documents.jsonl", items)
    config = SimConfig(
        keys=None,
        default_limits=KeyLimits(rpm=1200, tpm=400_000, rpd=None, rph=None, concurrency=None),
        revoked=frozenset(),
        latency=parse_latency("lognormal:0.25,0.4"),
        error_rate=0.02,
        hang_rate=0.0,
        hang_seconds=0.0,
        seed=1,
    )
    server = SimServer(config)
    server.start()
    try:
        print(
            f"paceline demo: simulated OpenAI-style API on {server.url}, "
            f"{items} documents, {n_keys} keys",
            file=sys.stderr,
        )
        job = build_job(workdir.resolve(), server.url, n_keys)
        if progress == "auto":
            progress = "live" if sys.stderr.isatty() else "log"
        reporter: Reporter = (
            LiveReporter() if progress == "live" else LogReporter(every_seconds=2.0)
        )
        result = job.run(reporter=reporter, install_signal_handlers=True)
    finally:
        server.stop()
    print(
        f"results: {workdir.resolve() / 'results.db'} (table 'summaries'); try\n"
        f"  sqlite3 {workdir / 'results.db'} 'select id, summary from summaries limit 3'"
    )
    return result.exit_code
