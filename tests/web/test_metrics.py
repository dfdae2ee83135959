"""Prometheus metrics (serve and run --metrics-port) and --notify summaries."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import SimFactory, paceline_cmd, run_cli
from tests.web.conftest import ServeFactory
from tests.web.jobs import SECRETS, accounts_csv, wait_for, wait_state, write_job


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class Receiver:
    """A webhook on loopback that keeps what is POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                outer.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/s3cr3t-path"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_serve_metrics_are_labelled_by_job_and_masked_key(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server()
    write_job(tmp_path / "a", sim.url)
    write_job(tmp_path / "b", sim.url, name="other", upload=None, items=5)
    web = serve(tmp_path)
    csv = accounts_csv(tmp_path / "accounts.csv", range(20), bad_row=True)
    r = web.client.post("/api/jobs/accounts/start", files={"file": ("a.csv", csv.read_bytes())})
    assert r.status_code == 202
    wait_state(web.client, "accounts", "finished")

    r = web.client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(r.text)
    job = (("job", "accounts"),)
    assert got[("paceline_items", (("job", "accounts"), ("status", "done")))] == 20
    assert got[("paceline_items", (("job", "accounts"), ("status", "failed")))] == 1
    assert got[("paceline_items", (("job", "other"), ("status", "done")))] == 0
    assert got[("paceline_running", job)] == 0
    assert got[("paceline_in_flight", job)] == 0
    assert ("paceline_cost_usd_total", job) in got
    requests = {
        dict(labels)["key"]: value
        for (name, labels), value in got.items()
        if name == "paceline_key_requests_total" and dict(labels)["job"] == "accounts"
    }
    assert set(requests) == {"…1111", "…2222"}
    assert sum(requests.values()) == 20
    state = ("paceline_key_state", (("job", "accounts"), ("key", "…1111"), ("state", "ready")))
    assert got[state] == 1
    assert not any(s in r.text for s in SECRETS)


def test_a_run_serves_its_metrics_and_notifies_when_it_ends(
    tmp_path: Path, sim_server: SimFactory, receiver: Receiver
) -> None:
    sim = sim_server(latency="fixed:0.05")
    job = write_job(tmp_path, sim.url, name="plain", upload=None, items=400)
    args = ["--metrics-port", "0", "--notify", receiver.url, "--progress", "log"]
    proc = subprocess.Popen(
        paceline_cmd("run", job, "--concurrency", "4", *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
        assert found, line
        url = found.group(1)

        def running() -> dict[Any, float] | None:
            got = samples(httpx.get(url, timeout=5).text)
            done = got.get(("paceline_items", (("job", "plain"), ("status", "done"))), 0)
            return got if got.get(("paceline_running", (("job", "plain"),))) and done else None

        got = wait_for(running, timeout=15, what="metrics of the running job")
        assert got[("paceline_in_flight", (("job", "plain"),))] <= 4
        assert ("paceline_limiter_waiting_requests", (("job", "plain"),)) in got
        assert ("paceline_limiter_wait_seconds_total", (("job", "plain"),)) in got
        now = (("job", "plain"), ("window", "now"))
        assert ("paceline_throughput_items_per_second", now) in got
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    wait_for(lambda: receiver.bodies, timeout=5, what="the notification")
    (summary,) = receiver.bodies
    assert summary["event"] == "run finished"
    assert (summary["job"], summary["exit_code"], summary["stop_reason"]) == (
        "plain",
        130,
        "interrupted",
    )
    assert 0 < summary["done"] < 400
    assert summary["done"] + summary["pending"] + summary["failed"] == 400
    assert not any(s in json.dumps(summary) for s in SECRETS)


def test_a_notification_that_cannot_be_sent_is_one_line(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server()
    job = write_job(tmp_path, sim.url, name="plain", upload=None, items=3)
    closed = Receiver()
    url = closed.url
    closed.close()
    result = run_cli("run", job, "--notify", url, "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"[paceline] notify {url.split('/hook')[0]} failed: ConnectError"
    ]
    assert "s3cr3t-path" not in result.stderr  # a webhook's path is its secret


def test_serve_notifies_when_a_run_it_started_ends(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory, receiver: Receiver
) -> None:
    sim = sim_server()
    write_job(tmp_path, sim.url)
    web = serve(tmp_path, notify=receiver.url)
    csv = accounts_csv(tmp_path / "accounts.csv", range(10))
    r = web.client.post("/api/jobs/accounts/start", files={"file": ("a.csv", csv.read_bytes())})
    assert r.status_code == 202
    # The webhook's URL (its path is often its secret) is in no answer, log or command line.
    assert receiver.url not in r.text
    assert receiver.url not in Path(r.json()["log"]).read_text()
    wait_for(lambda: receiver.bodies, timeout=15, what="the notification")
    (summary,) = receiver.bodies
    assert (summary["job"], summary["exit_code"], summary["done"]) == ("accounts", 0, 10)
    assert summary["jobfile"].endswith("accounts.py")


def test_a_run_that_fails_with_an_error_notifies_it(
    tmp_path: Path, sim_server: SimFactory, receiver: Receiver
) -> None:
    sim = sim_server()
    job = write_job(tmp_path, sim.url, name="plain", upload=None, items=3)
    (tmp_path / "items.jsonl").unlink()
    result = run_cli("run", job, "--notify", receiver.url)
    assert result.returncode == 2
    wait_for(lambda: receiver.bodies, timeout=5, what="the notification")
    (summary,) = receiver.bodies
    assert summary["event"] == "run failed"
    assert (summary["job"], summary["exit_code"]) == ("plain", 2)
    assert "source file not found" in summary["error"]
