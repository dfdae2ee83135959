"""``paceline demo``: a whole job against the built-in simulated provider.

It writes a few hundred sample documents and a job file into its own folder, starts the
simulated OpenAI-style API on a free loopback port, and summarises every document through
it with four keys, showing the live dashboard. No server, key or network is needed.

The demo touches only what it made: its folder carries a marker file; a folder without
the marker that holds anything else is refused. Run again, it continues where it stopped
(``--fresh`` starts over, removing only the files the demo wrote).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

from ._jobfile import load_job
from .errors import ConfigError
from .report import LiveReporter, LogReporter, Reporter

__all__ = ["MARKER", "run_demo", "write_documents"]

#: The file that says a folder is the demo's own.
MARKER = ".paceline-demo"
#: What the demo writes in its folder, and nothing else.
_OWN = ("documents.jsonl", "job.py", "results.db", "results.db-wal", "results.db-shm")

# Words the sample documents are made of (the simulated model summarises them).
_WORDS = (
    "quota", "latency", "token", "request", "window", "key", "batch", "retry", "limit",
    "provider", "throughput", "migration", "document", "summary", "archive", "ledger",
)  # fmt: skip

JOB_FILE = '''"""The paceline demo's job: summarise documents through an OpenAI-style API.

`paceline demo` runs it against the built-in simulated provider (its address comes in
PACELINE_DEMO_URL). Try: paceline status job.py · paceline keys job.py · paceline plan job.py
"""

import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
URL = os.environ.get("PACELINE_DEMO_URL", "http://127.0.0.1:8800")

# Demo keys for the simulated API (real keys belong in the environment or a .env file).
keys = pl.KeyPool(
    [f"sk-demo-{{n:02d}}-{{'x' * 24}}{{n:04d}}" for n in range(1, {n_keys} + 1)],
    rpm=1200,
    tpm=400_000,
)
job = pl.Job(
    "demo",
    source=pl.JSONL(HERE / "documents.jsonl", id="doc_id"),
    sink=pl.SQLiteSink(HERE / "results.db", table="summaries"),
    keys=keys,
    retries=6,
    http_timeout=10.0,
)


@job.task
async def summarize(item: pl.Item, ctx: pl.Context) -> dict:
    text = item.data["text"]
    body = {{
        "model": "gpt-4o-mini",
        "max_tokens": 60,
        "messages": [{{"role": "user", "content": f"Summarise: {{text}}"}}],
    }}
    r = await ctx.http.post(
        f"{{URL}}/v1/chat/completions", json=body, cost=pl.Cost(tokens=len(text) // 4 + 60)
    )
    r.raise_for_status()
    answer = r.json()
    return {{
        "title": item.data["title"],
        "summary": answer["choices"][0]["message"]["content"],
        "tokens": answer["usage"]["total_tokens"],
    }}
'''


def write_documents(path: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for n in range(1, count + 1):
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 80)))
            f.write(
                json.dumps({"doc_id": f"doc-{n:05d}", "title": f"Document {n}", "text": words})
                + "\n"
            )


def prepare(workdir: Path, *, items: int, n_keys: int, fresh: bool) -> bool:
    """Make ``workdir`` the demo's folder; returns whether an earlier demo is continued.

    Refuses a folder the demo did not make that holds anything; never removes a file it
    did not write.
    """
    marker = workdir / MARKER
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"{workdir} is a file, not a folder: choose another --dir")
    if workdir.is_dir() and not marker.exists() and any(workdir.iterdir()):
        raise ConfigError(
            f"{workdir} holds files the demo did not make: choose another --dir "
            "(the demo only writes into an empty or its own folder)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for name in _OWN:
            (workdir / name).unlink(missing_ok=True)
        store = workdir / ".paceline"
        for name in ("demo.db", "demo.db-wal", "demo.db-shm"):
            (store / name).unlink(missing_ok=True)
        if store.is_dir() and not any(store.iterdir()):
            shutil.rmtree(store)
    marker.write_text("made by `paceline demo`: it may rewrite the files it made here\n")
    documents = workdir / "documents.jsonl"
    continued = documents.exists()
    if not continued:
        write_documents(documents, items)
    (workdir / "job.py").write_text(JOB_FILE.format(n_keys=n_keys))
    return continued


def run_demo(*, items: int, n_keys: int, workdir: Path, progress: str, fresh: bool = False) -> int:
    """Run the demo; returns the exit code."""
    from .sim import KeyLimits, SimConfig, SimServer, parse_latency

    continued = prepare(workdir, items=items, n_keys=n_keys, fresh=fresh)
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
        os.environ["PACELINE_DEMO_URL"] = server.url
        job = load_job(workdir / "job.py")
        total = sum(1 for _ in (workdir / "documents.jsonl").open())
        how = "continuing the earlier demo" if continued else f"{total} documents"
        print(
            f"paceline demo: simulated OpenAI-style API on {server.url}, {how}, "
            f"{n_keys} keys (job file {workdir / 'job.py'})",
            file=sys.stderr,
        )
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
        f"  sqlite3 {workdir / 'results.db'} 'select id, summary from summaries limit 3'\n"
        f"  paceline status {workdir / 'job.py'}   (also: keys, plan, failures, export)"
    )
    if result.interrupted or result.snapshot.pending:
        print("  `paceline demo` again continues this demo; `paceline demo --fresh` starts over")
    return result.exit_code
