"""Prometheus metrics, labelled by job: for ``paceline serve`` (``GET /metrics``, read from
the stores on each scrape) and for one run (``paceline run --metrics-port N``, read from
the running engine).

Both turn a status in the shape of ``status --json`` into the same metric families, so a
dashboard built on one works on the other. Keys appear masked (``…a1b2``) in labels.

=====================================  =======  ==============================================
metric                                 type     labels
=====================================  =======  ==============================================
``paceline_items``                     gauge    job, status (done, failed, pending, retrying,
                                                running, skipped: they add up to the total)
``paceline_in_flight``                 gauge    job
``paceline_running``                   gauge    job (1 while a worker runs the job)
``paceline_workers``                   gauge    job
``paceline_throughput_items_per_second`` gauge  job, window (now, avg, peak)
``paceline_eta_seconds``               gauge    job (absent while unknown)
``paceline_cost_usd_total``            counter  job
``paceline_key_requests_total``        counter  job, key
``paceline_key_tokens_total``          counter  job, key
``paceline_key_rate_limited_total``    counter  job, key (429s)
``paceline_key_errors_total``          counter  job, key
``paceline_key_state``                 gauge    job, key, state (1 for the key's state)
``paceline_key_quota_used``            gauge    job, key, unit (today's use of a daily quota)
``paceline_key_quota_limit``           gauge    job, key, unit
``paceline_limiter_waiting_requests``  gauge    job (run only: requests waiting for a slot)
``paceline_limiter_wait_seconds_total`` counter job (run only: time requests spent waiting)
=====================================  =======  ==============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from paceline.errors import ConfigError

if TYPE_CHECKING:
    from paceline.engine import Engine, RunResult, Snapshot
    from paceline.report import Reporter

__all__ = [
    "CONTENT_TYPE",
    "MetricsReporter",
    "StatusCollector",
    "families",
    "render",
    "snapshot_status",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("ready", "cooling", "parked", "disabled")


def families(statuses: Iterable[dict[str, Any]]) -> list[Metric]:
    """The metric families for jobs given as ``status --json`` dicts (plus, from a running
    engine, ``limiter`` numbers)."""
    items = GaugeMetricFamily(
        "paceline_items", "Items of the job by status.", labels=["job", "status"]
    )
    in_flight = GaugeMetricFamily("paceline_in_flight", "Items in flight now.", labels=["job"])
    running = GaugeMetricFamily(
        "paceline_running", "1 while a worker runs the job.", labels=["job"]
    )
    workers = GaugeMetricFamily("paceline_workers", "Live workers of the job.", labels=["job"])
    rate = GaugeMetricFamily(
        "paceline_throughput_items_per_second",
        "Items finished per second (now: last seconds; avg and peak: this run).",
        labels=["job", "window"],
    )
    eta = GaugeMetricFamily(
        "paceline_eta_seconds", "Expected seconds until the job is finished.", labels=["job"]
    )
    cost = CounterMetricFamily("paceline_cost_usd", "What the job has cost, USD.", labels=["job"])
    per_key = ["job", "key"]
    requests = CounterMetricFamily("paceline_key_requests", "Requests sent.", labels=per_key)
    tokens = CounterMetricFamily("paceline_key_tokens", "Tokens used.", labels=per_key)
    limited = CounterMetricFamily(
        "paceline_key_rate_limited",
        "Answers that said the key is rate limited (429).",
        labels=per_key,
    )
    errors = CounterMetricFamily("paceline_key_errors", "Requests that failed.", labels=per_key)
    state = GaugeMetricFamily(
        "paceline_key_state", "1 for the key's state.", labels=["job", "key", "state"]
    )
    used = GaugeMetricFamily(
        "paceline_key_quota_used", "Today's use of a daily quota.", labels=["job", "key", "unit"]
    )
    limit = GaugeMetricFamily(
        "paceline_key_quota_limit", "A daily quota.", labels=["job", "key", "unit"]
    )
    waiting = GaugeMetricFamily(
        "paceline_limiter_waiting_requests",
        "Requests waiting for a key's slot now.",
        labels=["job"],
    )
    waited = CounterMetricFamily(
        "paceline_limiter_wait_seconds",
        "Time requests spent waiting for a key's slot (sampled).",
        labels=["job"],
    )
    for s in statuses:
        job = str(s["job"])
        retrying = int(s.get("retrying") or 0)
        counts = {
            "done": s.get("done", 0),
            "failed": s.get("failed", 0),
            "pending": int(s.get("pending") or 0) - retrying,
            "retrying": retrying,
            "running": s.get("running", 0),
            "skipped": s.get("skipped", 0),
        }
        for status, n in counts.items():
            items.add_metric([job, status], float(n or 0))
        live = s.get("state") == "running"
        run = s.get("run") or {}
        running.add_metric([job], 1.0 if live else 0.0)
        workers.add_metric([job], float(len(s.get("workers") or []) if live else 0))
        in_flight.add_metric([job], float(s.get("running") or 0))
        cost.add_metric([job], float(s.get("cost_usd") or 0.0))
        for window in ("now", "avg", "peak"):
            value = run.get(f"rate_{window}") if live else 0.0
            rate.add_metric([job, window], float(value or 0.0))
        if live and run.get("eta_seconds") is not None:
            eta.add_metric([job], float(run["eta_seconds"]))
        for k in s.get("keys") or []:
            key = str(k["key"])
            requests.add_metric([job, key], float(k.get("requests") or 0))
            tokens.add_metric([job, key], float(k.get("tokens") or 0))
            limited.add_metric([job, key], float(k.get("rate_limited") or 0))
            errors.add_metric([job, key], float(k.get("errors") or 0))
            now = str(k.get("state") or "ready").split(" ", 1)[0]
            for name in STATES:
                state.add_metric([job, key, name], 1.0 if now == name else 0.0)
            for day in k.get("today") or []:
                used.add_metric([job, key, str(day["unit"])], float(day["used"]))
                limit.add_metric([job, key, str(day["unit"])], float(day["limit"]))
        limiter = s.get("limiter")
        if limiter:
            waiting.add_metric([job], float(limiter["waiting"]))
            waited.add_metric([job], float(limiter["wait_seconds"]))
    found = [items, in_flight, running, workers, rate, eta, cost]
    found += [requests, tokens, limited, errors, state, used, limit, waiting, waited]
    return found


class StatusCollector(Collector):
    """Collects the metrics of whatever ``read()`` returns, on each scrape."""

    def __init__(self, read: Callable[[], Sequence[dict[str, Any]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield from families(self.read())


def render(read: Callable[[], Sequence[dict[str, Any]]]) -> bytes:
    """The Prometheus text exposition of the jobs ``read()`` returns."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(read))
    return generate_latest(registry)


def snapshot_status(s: Snapshot, state: str = "running") -> dict[str, Any]:
    """A run's numbers (the engine's snapshot) in the shape of ``status --json``."""
    return {
        "job": s.job,
        "state": state,
        "total": s.total,
        "done": s.done,
        "failed": s.failed,
        "pending": s.pending,
        "running": s.running,
        "retrying": s.retrying,
        "skipped": s.skipped,
        "cost_usd": s.cost_total,
        "keys": s.keys,
        "workers": [{"in_flight": s.running}],
        "run": {
            "rate_now": s.rate_now,
            "rate_avg": s.rate_avg,
            "rate_peak": s.rate_peak,
            "eta_seconds": s.eta,
        },
    }


class MetricsReporter:
    """Wraps the run's reporter and serves its numbers on ``127.0.0.1:port/metrics``.

    Numbers are sampled from the engine twice a second in the run's own loop (the engine
    is not thread-safe); a scrape, on the exporter's thread, reads the last sample.
    """

    def __init__(self, inner: Reporter, port: int, host: str = "127.0.0.1") -> None:
        self.inner = inner
        self._latest: list[dict[str, Any]] = []
        self._wait_seconds = 0.0
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(lambda: self._latest))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: {exc.strerror or exc}") from None
        self.port = self._server.server_port

    def _sample(self, engine: Engine, waiting_before: int, seconds: float) -> int:
        status = snapshot_status(engine.snapshot())
        limiter = getattr(getattr(engine.job, "keys", None), "limiter", None)
        waiting = getattr(limiter, "waiting", None)
        if isinstance(waiting, int):
            # Little's law turned around: requests waiting × time = time spent waiting.
            self._wait_seconds += waiting_before * seconds
            status["limiter"] = {"waiting": waiting, "wait_seconds": self._wait_seconds}
        self._latest = [status]
        return waiting if isinstance(waiting, int) else 0

    async def follow(self, engine: Engine) -> None:
        inner = asyncio.create_task(self.inner.follow(engine))
        try:
            waiting, last = 0, time.monotonic()
            while True:
                now = time.monotonic()
                waiting = self._sample(engine, waiting, now - last)
                last = now
                await asyncio.sleep(0.5)
        finally:
            inner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inner

    def note(self, message: str) -> None:
        self.inner.note(message)

    def finish(self, result: RunResult) -> None:
        # The last numbers stay scrapeable until the process exits.
        final = snapshot_status(result.snapshot, "stopped" if result.interrupted else "finished")
        limiter = self._latest[0].get("limiter") if self._latest else None
        self._latest = [{**final, **({"limiter": limiter} if limiter else {})}]
        self.inner.finish(result)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
