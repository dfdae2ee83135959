"""Quota utilization: how much of a key pool's limits a client turns into answers.

For each wire style (OpenAI, Anthropic, GitHub, Gemini) the simulated provider runs in its
own process (``paceline sim``) with several keys, a per-key limit and a latency far above
the request interval: at 600 requests/minute per key (10/s) and answers taking ~1 s, about
40 requests must be in flight at all times to use 4 keys in full. After a warm-up, over a
steady-state window, we read the simulator's own counters (``GET /_sim/stats``) at the
window's start and end and report:

* **throughput / limit**: answered-OK requests per second over the window, divided by the
  sum of the keys' limits;
* **429 share**: the share of the requests the simulator received in the window that it
  refused for a rate limit (429, or GitHub's 403 with ``x-ratelimit-remaining: 0``).

Two clients, side by side, each against a fresh simulator with the same settings:

* ``paceline`` — a :class:`paceline.Job` over more items than can finish in the window,
  ``keys=KeyPool(keys, auth=..., rpm=LIMIT)`` (GitHub: ``limits=["N/hour"]``), automatic
  concurrency, no sink; the task sends one request with ``ctx.http`` and calls
  ``raise_for_status()``. The run is stopped after the window with the engine's stop.
* ``baseline`` — what users' scripts do: workers = keys × 2, keys taken round-robin, each
  key with its own client-side token bucket at the key's rate, plain httpx, and on a 429
  the worker sleeps (``Retry-After`` or 2 s) and tries again.

    python benchmarks/quota_utilization.py                      # 4 styles, ~9 minutes
    python benchmarks/quota_utilization.py --styles openai --warmup 10 --window 20
    python benchmarks/quota_utilization.py --repeat 3 --styles github,gemini
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

import paceline as pl

if TYPE_CHECKING:
    from paceline.engine import Engine, RunResult

TARGET_UTILIZATION = 0.97
TARGET_429_SHARE = 0.01
STOP_GRACE = 3.0  # seconds the paceline run may take to finish what is in flight


@dataclass(frozen=True)
class Style:
    """How one provider is called: route, method, body, and how the key travels."""

    name: str
    method: str
    path: str
    auth: str  # as paceline.KeyPool spells it
    body: dict[str, Any] | None


STYLES = {
    "openai": Style(
        "openai",
        "POST",
        "/v1/chat/completions",
        "bearer",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}]},
    ),
    "anthropic": Style(
        "anthropic",
        "POST",
        "/v1/messages",
        "header:x-api-key",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hi."}],
        },
    ),
    "github": Style("github", "GET", "/repos/o/r", "token", None),
    "gemini": Style(
        "gemini",
        "POST",
        "/v1beta/models/gemini-2.0-flash:generateContent",
        "header:x-goog-api-key",
        {"contents": [{"role": "user", "parts": [{"text": "Say hi."}]}]},
    ),
}


@dataclass
class Settings:
    keys: int
    rate: int  # requests per minute per key (GitHub: rate × 60 per hour)
    latency: str
    warmup: float
    window: float
    seed: int

    @property
    def limit_per_s(self) -> float:
        """The sum of the keys' limits, in requests per second."""
        return self.keys * self.rate / 60.0


@dataclass
class Measurement:
    style: str
    client: str
    limit_per_s: float
    ok_per_s: float = 0.0
    requests: int = 0
    rate_limited: int = 0
    errors: int = 0
    per_key: dict[str, dict[str, int]] = field(default_factory=dict)
    in_flight: list[float] = field(default_factory=list)  # requests on the wire, sampled
    waiting: list[float] = field(default_factory=list)  # paceline: waiting for a slot
    workers: list[int] = field(default_factory=list)
    per_second: list[float] = field(default_factory=list)  # ok/s, second by second
    loop_lag: float = 0.0  # the client's longest event-loop stall in the window, seconds
    notes: list[str] = field(default_factory=list)

    @property
    def utilization(self) -> float:
        return self.ok_per_s / self.limit_per_s

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0


# -- the simulated provider ------------------------------------------------------------


def secrets_for(n: int, style: str) -> list[str]:
    # Long keys (paceline masks them by their last four characters) ending in distinct
    # characters, so the simulator's per-key counters (also by the last four) stay apart.
    return [f"bench-{style}-secret-{i:04d}-k{i:03d}" for i in range(n)]


@contextlib.contextmanager
def simulator(style: str, keys: list[str], s: Settings) -> Iterator[str]:
    """``paceline sim`` in its own process; yields its URL. Its stderr goes to a file (a
    pipe nobody reads could fill up and block it) and is shown if the measurement fails."""
    limit = ["--rph", str(s.rate * 60)] if style == "github" else ["--rpm", str(s.rate)]
    cmd = [
        sys.executable, "-m", "paceline", "sim", "--port", "0", "--keys", ",".join(keys),
        *limit, "--latency", s.latency, "--seed", str(s.seed),
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
            tail = log.read()[-2000:]
            status = proc.poll()
            print(f"paceline sim ({style}, exit status {status}) stderr:\n{tail}", file=sys.stderr)
            raise
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def sim_stats(client: httpx.AsyncClient, url: str) -> tuple[float, dict[str, Any]]:
    """The simulator's counters, and the moment they were read (mid-request)."""
    t0 = time.monotonic()
    r = await client.get(f"{url}/_sim/stats")
    t1 = time.monotonic()
    r.raise_for_status()
    return (t0 + t1) / 2, r.json()


class Observer:
    """Reads the simulator's counters every second; the window's two readings give the
    figures, the others the ramp and the in-flight samples."""

    def __init__(self, m: Measurement, url: str, s: Settings) -> None:
        self.m, self.url, self.s = m, url, s
        self.in_window = False

    async def observe(self, sample: Any) -> None:
        """Warm up, measure the window; ``sample()`` returns (on wire, waiting, workers)."""
        ticker = asyncio.create_task(self._tick())
        try:
            await self._observe(sample)
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        # A client whose event loop is stuck (CPU-bound) cannot send: measure how long.
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            if self.in_window:
                self.m.loop_lag = max(self.m.loop_lag, time.monotonic() - before - 0.05)

    async def _observe(self, sample: Any) -> None:
        m, s = self.m, self.s
        # A fresh connection per reading: a client stalled longer than the server's
        # keep-alive timeout would otherwise send on a connection the server closed.
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=fresh) as client:
            start = time.monotonic()
            last_t, last = await sim_stats(client, self.url)
            begin: tuple[float, dict[str, Any]] | None = None
            second = 1
            while True:
                await asyncio.sleep(max(0.0, start + second - time.monotonic()))
                second = max(second + 1, int(time.monotonic() - start) + 1)
                t, stats = await sim_stats(client, self.url)
                m.per_second.append((stats["total"]["ok"] - last["total"]["ok"]) / (t - last_t))
                last_t, last = t, stats
                elapsed = t - start
                if begin is None and elapsed >= s.warmup:
                    begin = (t, stats)
                    self.in_window = True
                elif begin is not None:
                    on_wire, waiting, workers = sample()
                    m.in_flight.append(on_wire)
                    m.waiting.append(waiting)
                    m.workers.append(workers)
                    if elapsed >= s.warmup + s.window:
                        break
        assert begin is not None
        (t0, a), (t1, b) = begin, (t, stats)
        m.ok_per_s = (b["total"]["ok"] - a["total"]["ok"]) / (t1 - t0)
        m.requests = b["total"]["requests"] - a["total"]["requests"]
        m.rate_limited = b["total"]["rate_limited"] - a["total"]["rate_limited"]
        m.errors = b["total"]["errors"] - a["total"]["errors"]
        for key, counts in b["keys"].items():
            before = a["keys"].get(key, {})
            m.per_key[key] = {k: v - before.get(k, 0) for k, v in counts.items()}


# -- paceline ----------------------------------------------------------------------------


class BenchReporter:
    """A paceline reporter that measures the window and then stops the run."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.done = False
        self.notes: list[str] = []

    async def follow(self, engine: Engine) -> None:
        limiter = engine.job.keys.limiter if engine.job.keys else None

        def sample() -> tuple[float, float, int]:
            snap = engine.snapshot()
            waiting = limiter.waiting if limiter else 0
            # snapshot().running counts items inside the task, including those still
            # waiting for the limiter to give them a key and a slot.
            return snap.running - waiting, waiting, snap.workers

        await self.observer.observe(sample)
        self.done = True
        engine.stop("benchmark window over")

    def note(self, message: str) -> None:
        self.notes.append(message)

    def finish(self, result: RunResult) -> None:
        return None


async def run_paceline(style: Style, keys: list[str], url: str, s: Settings) -> Measurement:
    m = Measurement(style.name, "paceline", s.limit_per_s)
    if style.name == "github":
        pool = pl.KeyPool(keys, auth=style.auth, limits=[f"{s.rate * 60}/hour"])
    else:
        pool = pl.KeyPool(keys, auth=style.auth, rpm=s.rate)
    # More items than can finish: the window ends long before the source does.
    n_items = int(s.limit_per_s * (s.warmup + s.window) * 2) + 1_000

    def items() -> Iterator[dict[str, Any]]:
        return ({"id": f"item-{i:07d}"} for i in range(n_items))

    job = pl.Job("quota-bench", source=pl.IterableSource(items, id="id"), keys=pool)
    target = url + style.path

    @job.task
    async def call(item: pl.Item, ctx: pl.Context) -> None:
        r = await ctx.http.request(style.method, target, json=style.body)
        r.raise_for_status()

    reporter = BenchReporter(Observer(m, url, s))
    with tempfile.TemporaryDirectory(prefix="paceline-quota-") as tmp:
        result = await job.run_async(
            store=Path(tmp) / "store.db", reporter=reporter, grace=STOP_GRACE
        )
    if not reporter.done:
        raise RuntimeError(f"paceline run ended before the window did: {result.stop_reason}")
    m.notes = reporter.notes
    return m


# -- baseline: how users' scripts do it --------------------------------------------------


class TokenBucket:
    """A per-key client-side limiter: ``rate`` per second, bursts up to ``capacity``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens = capacity
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


def key_headers(auth: str, key: str) -> dict[str, str]:
    kind, _, name = auth.partition(":")
    if kind == "bearer":
        return {"Authorization": f"Bearer {key}"}
    if kind == "token":
        return {"Authorization": f"token {key}"}
    return {name: key}


def rate_limited(r: httpx.Response) -> bool:
    return r.status_code == 429 or (
        r.status_code == 403 and r.headers.get("x-ratelimit-remaining") == "0"
    )


async def run_baseline(style: Style, keys: list[str], url: str, s: Settings) -> Measurement:
    m = Measurement(style.name, "baseline", s.limit_per_s)
    per_key = s.rate / 60.0
    buckets = [TokenBucket(per_key, capacity=max(1.0, per_key)) for _ in keys]
    rotation = itertools.cycle(range(len(keys)))
    target = url + style.path
    on_wire = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal on_wire
        while True:  # one item after another, each until it succeeds
            while True:
                i = next(rotation)
                await buckets[i].acquire()
                on_wire += 1
                headers = key_headers(style.auth, keys[i])
                try:
                    r = await client.request(style.method, target, json=style.body, headers=headers)
                finally:
                    on_wire -= 1
                if rate_limited(r):
                    await asyncio.sleep(float(r.headers.get("retry-after", 2)))
                    continue
                r.raise_for_status()
                break

    workers = 2 * len(keys)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=workers)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(workers)]
        observer = Observer(m, url, s)
        try:
            await observer.observe(lambda: (on_wire, 0, workers))
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for res in results:
            if isinstance(res, Exception) and not isinstance(res, asyncio.CancelledError):
                m.notes.append(f"worker died: {res!r}")
    return m


CLIENTS = {"paceline": run_paceline, "baseline": run_baseline}


def measure(style_name: str, client: str, s: Settings) -> Measurement:
    style = STYLES[style_name]
    keys = secrets_for(s.keys, style_name)
    with simulator(style_name, keys, s) as url:
        return asyncio.run(CLIENTS[client](style, keys, url, s))


# -- report ------------------------------------------------------------------------------


def describe(m: Measurement) -> str:
    wire = statistics.mean(m.in_flight) if m.in_flight else 0.0
    waiting = statistics.mean(m.waiting) if m.waiting else 0.0
    keys = " ".join(
        f"{k}:{c['ok']}ok/{c['rate_limited']}x429" for k, c in sorted(m.per_key.items())
    )
    ramp = " ".join(f"{r:.0f}" for r in m.per_second)
    workers = f"{m.workers[0]}→{m.workers[-1]}" if m.workers else "?"
    extra = f"; notes: {m.notes[-3:]}" if m.notes else ""
    if m.utilization > 1.01:
        extra += "; ABOVE the limit: a burst was still being spent in the window"
    return (
        f"    {m.style:<9} {m.client:<8} {m.utilization:6.3f} of limit  "
        f"{m.ok_per_s:6.2f} ok/s  429 {m.share_429:6.2%} ({m.rate_limited}/{m.requests})  "
        f"errors {m.errors}  in flight {wire:5.1f} (+{waiting:.1f} waiting)  workers {workers}  "
        f"loop stall max {m.loop_lag:.2f} s\n"
        f"      per key: {keys}\n"
        f"      ok/s second by second: {ramp}{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", default=",".join(STYLES), help="comma-separated")
    parser.add_argument("--clients", default="paceline,baseline", help="comma-separated")
    parser.add_argument("--keys", type=int, default=4, help="number of keys")
    parser.add_argument(
        "--rate", type=int, default=600, help="requests/minute per key (GitHub: x60 per hour)"
    )
    parser.add_argument("--latency", default="lognormal:1,0.5", help="as for paceline sim")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds")
    parser.add_argument("--window", type=float, default=40.0, help="seconds")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    styles = [x.strip() for x in args.styles.split(",") if x.strip()]
    clients = [x.strip() for x in args.clients.split(",") if x.strip()]
    for name in styles:
        if name not in STYLES:
            parser.error(f"unknown style {name!r} (known: {', '.join(STYLES)})")
    for name in clients:
        if name not in CLIENTS:
            parser.error(f"unknown client {name!r} (known: {', '.join(CLIENTS)})")
    s = Settings(args.keys, args.rate, args.latency, args.warmup, args.window, args.seed)

    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
        f"{s.keys} keys × {s.rate}/minute (GitHub: {s.rate * 60}/hour) = "
        f"{s.limit_per_s:g} requests/s in all; latency {s.latency}; "
        f"warm-up {s.warmup:g} s, window {s.window:g} s; repeat {args.repeat}"
    )
    runs: dict[tuple[str, str], list[Measurement]] = {}
    for style in styles:
        for rep in range(args.repeat):
            for client in clients:
                # Each repetition draws other latencies; both clients of one see the same.
                m = measure(style, client, dataclasses.replace(s, seed=s.seed + rep))
                runs.setdefault((style, client), []).append(m)
                print(describe(m) + (f"  [run {rep + 1}]" if args.repeat > 1 else ""), flush=True)

    print()
    print("| style | client | throughput / limit | 429 share | runs (throughput · 429) |")
    print("|---|---|---:|---:|---|")
    verdicts: dict[str, str] = {}
    for (style, client), ms in runs.items():
        util = statistics.median(m.utilization for m in ms)
        share = statistics.median(m.share_429 for m in ms)
        shown = " ; ".join(f"{m.utilization:.3f} · {m.share_429:.2%}" for m in ms)
        bold = "**" if client == "paceline" else ""
        print(f"| {style} | {bold}{client}{bold} | {util:.3f} | {share:.2%} | {shown} |")
        if client == "paceline":
            if util > 1.01:
                # Only a burst allowance (GCRA's, against a fixed window) gets above the
                # limit, and only for a while: the window did not see the steady state.
                verdicts[style] = "not steady (above the limit: lengthen --warmup)"
            elif util >= TARGET_UTILIZATION and share <= TARGET_429_SHARE:
                verdicts[style] = "met"
            else:
                verdicts[style] = "NOT met"
    if verdicts:
        print(
            f"\ntarget (paceline ≥ {TARGET_UTILIZATION} of the limit, ≤ {TARGET_429_SHARE:.0%} "
            "of requests answered 429): "
            + "; ".join(f"{style} {verdict}" for style, verdict in verdicts.items())
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
