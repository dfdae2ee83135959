"""The JSON API over real runs: uploads, start, stop, retry, expedite, failures, events."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from tests.conftest import SimFactory, read_jsonl, run_cli
from tests.web.conftest import ServeFactory
from tests.web.jobs import accounts_csv, status, wait_for, wait_state, write_job


def start(
    client: httpx.Client, job: str, file: Path | None = None, **fields: str
) -> httpx.Response:
    files = {"file": (file.name, file.read_bytes(), "text/csv")} if file else None
    return client.post(f"/api/jobs/{job}/start", data=fields, files=files)


def inbox(folder: Path, job: str = "accounts") -> list[str]:
    path = folder / ".paceline" / "uploads" / job
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_an_uploaded_csv_runs_to_the_end_and_status_is_the_clis(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server()
    job = write_job(tmp_path, sim.url)
    web = serve(tmp_path)
    listed = web.client.get("/api/jobs").json()["jobs"]
    assert [(j["job"], j["state"]) for j in listed] == [("accounts", "not started")]

    csv = accounts_csv(tmp_path / "accounts.csv", range(40), bad_row=True)
    r = start(web.client, "accounts", csv, mode="parallel", concurrency="8")
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["upload"]["name"] == "accounts.csv" and started["upload"]["new"]
    assert "--concurrency" in started["command"] and "8" in started["command"]
    assert inbox(tmp_path) == sorted([".lock", "index.json", started["upload"]["file"]])

    final = wait_state(web.client, "accounts", "finished")
    assert (final["done"], final["failed"], final["pending"]) == (40, 1, 0)
    assert final["upload"]["files"][0]["sha256"] == started["upload"]["sha256"]
    assert Path(final["run_log"]).exists()
    assert len(read_jsonl(tmp_path / "out-accounts.jsonl")) == 40

    # GET /api/jobs/{name} holds every field of `status --json`, with the same values.
    cli = json.loads(run_cli("status", job, "--json").stdout)
    assert {k: final[k] for k in cli} == cli

    failures = web.client.get("/api/jobs/accounts/failures").json()
    assert failures["total"] == 1
    (bad,) = failures["items"]
    assert (bad["id"], bad["invalid"]) == ("@line:4", True)
    assert bad["error"] == "line 4: expected 3 fields, found 6"
    assert failures["kinds"] == {"invalid line: expected 3 fields, found 6": 1}

    # An invalid line has nothing to run: retrying or expediting it alone says so.
    r = web.client.post("/api/jobs/accounts/retry", json={"ids": ["@line:4"]})
    assert (r.json()["put_back"], r.json()["invalid"]) == (0, ["@line:4"])
    r = web.client.post("/api/jobs/accounts/expedite", json={"ids": ["@line:4"]})
    assert r.json()["invalid"] == ["@line:4"]
    assert status(web.client, "accounts")["failed"] == 1


def test_a_second_upload_adds_its_new_ids_and_the_same_file_adds_nothing(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server()
    write_job(tmp_path, sim.url)
    web = serve(tmp_path)
    first = accounts_csv(tmp_path / "first.csv", range(20))
    assert start(web.client, "accounts", first).status_code == 202
    wait_state(web.client, "accounts", "finished")

    second = accounts_csv(tmp_path / "second.csv", range(10, 30))
    r = start(web.client, "accounts", second, mode="sequential")
    assert r.status_code == 202, r.text
    assert "--sequential" in r.json()["command"]
    s = wait_state(web.client, "accounts", "finished")
    assert (s["done"], s["duplicates"], s["total"]) == (30, 10, 30)
    rows = read_jsonl(tmp_path / "out-accounts.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(f"a{n}" for n in range(30))

    again = start(web.client, "accounts", second)
    assert again.status_code == 202
    assert again.json()["upload"]["new"] is False
    s = wait_state(web.client, "accounts", "finished")
    assert (s["done"], s["duplicates"]) == (30, 10)
    assert len(s["upload"]["files"]) == 2


def test_bad_requests_get_clear_answers_and_leave_nothing(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server()
    write_job(tmp_path / "up", sim.url)
    write_job(tmp_path / "plain", sim.url, name="plain", upload=None, items=3)
    write_job(tmp_path / "lines", sim.url, name="lines", upload="jsonl")
    web = serve(tmp_path, max_upload_mb=0.01)
    csv = accounts_csv(tmp_path / "ok.csv", range(3))

    def error(r: httpx.Response, code: int, *needles: str) -> None:
        assert r.status_code == code, r.text
        body = r.json()
        assert body["status"] == code
        for needle in needles:
            assert needle in body["error"]

    error(start(web.client, "nope", csv), 404, "no job named 'nope'")
    error(web.client.get("/api/jobs/nope"), 404, "no job named")
    error(start(web.client, "accounts", csv, mode="fast"), 422, "mode must be parallel or")
    error(start(web.client, "accounts", csv, concurrency="lots"), 422, "whole number")
    error(start(web.client, "accounts", csv, concurrency="0"), 422, "between 1 and")
    error(start(web.client, "accounts"), 422, "takes its input as an upload: send a file")
    error(start(web.client, "plain", csv), 422, "takes no upload")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,name\n1,x\n")
    error(start(web.client, "accounts", wrong), 422, "no 'account_id' column")
    error(start(web.client, "lines", csv), 422, "not JSON Lines")
    big = accounts_csv(tmp_path / "big.csv", range(1000))
    assert big.stat().st_size > 0.01 * (1 << 20)
    error(start(web.client, "accounts", big), 413, "larger than the limit of 10,485 bytes")
    error(web.client.post("/api/jobs/accounts/expedite", json={"ids": []}), 422, "ids")
    error(web.client.post("/api/jobs/accounts/expedite", json={"ids": ["a1"]}), 409, "not run")
    error(web.client.post("/api/jobs/accounts/stop"), 409, "is not running")
    error(web.client.get("/api/jobs/accounts/failures?limit=-1"), 422, "limit")
    # Nothing was kept of the refused files, and nothing ran.
    assert inbox(tmp_path / "up") in ([], [".lock"])
    assert inbox(tmp_path / "lines", "lines") in ([], [".lock"])
    assert status(web.client, "accounts")["state"] == "not started"


def test_already_running_is_409_stop_is_graceful_and_a_restart_continues(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server(latency="fixed:0.1")
    write_job(tmp_path, sim.url)
    web = serve(tmp_path)
    csv = accounts_csv(tmp_path / "accounts.csv", range(60))
    assert start(web.client, "accounts", csv, mode="sequential").status_code == 202
    assert status(web.client, "accounts")["state"] == "running"

    busy = start(web.client, "accounts", csv)
    assert busy.status_code == 409
    assert "already running" in busy.json()["error"]

    wait_for(lambda: status(web.client, "accounts")["done"] >= 3, what="a few items done")
    r = web.client.post("/api/jobs/accounts/stop")
    assert r.status_code == 200, r.text
    assert r.json() == {"job": "accounts", "asked": 1, "signalled": False}
    stopped = wait_state(web.client, "accounts", "stopped", timeout=5)
    assert 3 <= stopped["done"] < 60
    assert stopped["running"] == 0

    # Restarted in parallel with no new file, it continues from the uploaded one.
    again = start(web.client, "accounts", mode="parallel", concurrency="16")
    assert again.status_code == 202, again.text
    assert again.json()["upload"] is None
    final = wait_state(web.client, "accounts", "finished")
    assert (final["done"], final["failed"]) == (60, 0)
    rows = read_jsonl(tmp_path / "out-accounts.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(f"a{n}" for n in range(60))


def test_retry_and_expedite_put_failed_items_back(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server()
    write_job(tmp_path, sim.url)
    (tmp_path / "broken").touch()
    web = serve(tmp_path)
    csv = accounts_csv(tmp_path / "accounts.csv", range(12), failing=frozenset({2, 5, 8}))
    assert start(web.client, "accounts", csv).status_code == 202
    s = wait_state(web.client, "accounts", "finished")
    assert (s["done"], s["failed"]) == (9, 3)
    failures = web.client.get("/api/jobs/accounts/failures?limit=2").json()
    assert failures["total"] == 3 and len(failures["items"]) == 2
    assert failures["kinds"] == {"Permanent": 3}
    assert failures["items"][0]["error"] == "Permanent: item a8 is broken"

    (tmp_path / "broken").unlink()
    r = web.client.post("/api/jobs/accounts/retry", json={"ids": ["a2", "a3", "zz"]})
    assert r.json() == {
        "job": "accounts",
        "put_back": 1,
        "not_failed": {"a3": "done"},
        "unknown": ["zz"],
        "invalid": [],
    }
    assert status(web.client, "accounts")["failed"] == 2

    r = web.client.post("/api/jobs/accounts/expedite", json={"ids": ["a5", "nope"]})
    assert r.json()["before"] == {"a5": "failed", "nope": None}

    r = web.client.post("/api/jobs/accounts/retry")
    assert r.status_code == 200
    assert (r.json()["put_back"], r.json()["invalid_left"]) == (1, 0)

    assert start(web.client, "accounts").status_code == 202
    final = wait_state(web.client, "accounts", "finished")
    assert (final["done"], final["failed"]) == (12, 0)


def test_events_are_one_shared_poll_per_job_and_follow_a_run(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server(latency="fixed:0.02")
    write_job(tmp_path, sim.url)
    web = serve(tmp_path)
    url = web.url + "/api/jobs/accounts/events"
    with (
        httpx.Client(timeout=30) as a,
        httpx.Client(timeout=30) as b,
        a.stream("GET", url) as one,
        b.stream("GET", url) as two,
    ):
        assert one.headers["content-type"].startswith("text/event-stream")
        # An iterator dropped closes its connection: keep one per stream.
        lines, other = one.iter_lines(), two.iter_lines()
        first = _next_status(lines)
        _next_status(other)
        assert first["state"] == "not started"
        assert web.dashboard.hub.watched == {"accounts": 2}

        csv = accounts_csv(tmp_path / "accounts.csv", range(80))
        assert start(web.client, "accounts", csv, concurrency="4").status_code == 202
        seen = [_next_status(lines)]
        while seen[-1]["state"] != "finished":
            seen.append(_next_status(lines))
        assert seen[-1]["done"] == 80
        assert any(s["state"] == "running" for s in seen)
        # Events come when the status changes (about once a second), not in a storm.
        assert len(seen) < 30
    wait_for(lambda: web.dashboard.hub.watched == {}, what="the feed to close", timeout=5)


def _next_status(lines: object) -> dict[str, object]:
    for line in lines:  # type: ignore[attr-defined]
        if line.startswith("data: "):
            data: dict[str, object] = json.loads(line[6:])
            return data
    raise AssertionError("the stream ended")


def test_runs_survive_a_restart_of_serve(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server(latency="fixed:0.1")
    write_job(tmp_path, sim.url)
    first = serve(tmp_path)
    csv = accounts_csv(tmp_path / "accounts.csv", range(200))
    r = start(first.client, "accounts", csv, mode="sequential")
    assert r.status_code == 202
    pid = r.json()["pid"]
    first.stop()

    os.kill(pid, 0)  # still going without the server that started it
    second = serve(tmp_path)
    s = status(second.client, "accounts")
    assert s["state"] == "running"
    assert s["run"]["pid"] == pid
    assert second.client.post("/api/jobs/accounts/stop").json()["asked"] == 1
    wait_state(second.client, "accounts", "stopped", timeout=5)


def test_the_openapi_document_describes_the_api(tmp_path: Path, serve: ServeFactory) -> None:
    write_job(tmp_path, "http://127.0.0.1:9")
    web = serve(tmp_path)
    doc = web.client.get("/openapi.json").json()
    assert set(doc["paths"]) >= {
        "/api/jobs",
        "/api/jobs/{name}",
        "/api/jobs/{name}/start",
        "/api/jobs/{name}/stop",
        "/api/jobs/{name}/retry",
        "/api/jobs/{name}/expedite",
        "/api/jobs/{name}/failures",
        "/api/jobs/{name}/events",
        "/api/events",
        "/api/tickets",
        "/metrics",
    }
    form = doc["paths"]["/api/jobs/{name}/start"]["post"]["requestBody"]["content"]
    assert set(form["multipart/form-data"]["schema"]["properties"]) == {
        "file",
        "mode",
        "concurrency",
    }


@pytest.mark.parametrize("path", ["/", "/jobs/accounts", "/static/app.js", "/static/style.css"])
def test_pages_are_served(tmp_path: Path, serve: ServeFactory, path: str) -> None:
    write_job(tmp_path, "http://127.0.0.1:9")
    web = serve(tmp_path)
    r = web.client.get(path)
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    assert web.client.get("/jobs/unknown").status_code == 404
    assert web.client.get("/static/../../etc/passwd").status_code == 404


def test_a_run_stopped_before_it_reached_its_store_gets_sigterm(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server()
    job = write_job(tmp_path, sim.url, name="plain", upload=None, items=3)
    with job.open("a") as f:  # a job file that takes long to load (after serve loaded it)
        f.write("\nif (HERE / 'slow-start').exists():\n    import time\n    time.sleep(60)\n")
    web = serve(tmp_path)
    (tmp_path / "slow-start").touch()
    web.dashboard.launcher.start_timeout = 0.5
    r = web.client.post("/api/jobs/plain/start")
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "starting"
    stopped = web.client.post("/api/jobs/plain/stop")
    assert stopped.json() == {"job": "plain", "asked": 0, "signalled": True}
    pid = r.json()["pid"]

    def gone() -> bool:
        web.dashboard.launcher.reap()
        stat = Path(f"/proc/{pid}/stat")
        return not stat.exists() or stat.read_text().split()[2] == "Z"

    wait_for(gone, timeout=10, what="the run to end")
    assert status(web.client, "plain")["state"] == "not started"
