"""No secret is ever served; the token, tickets, host and origin checks; upload names."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from tests.conftest import SimFactory
from tests.web.conftest import ServeFactory
from tests.web.jobs import SECRETS, accounts_csv, wait_state, write_job

from paceline.sim import KeyLimits

LIMITED = "sk-web-secret-cccccccccccc3333"
REVOKED = "sk-web-secret-dddddddddddd4444"
TOKEN = "tok-0123456789-abcdefghij"


def first_event(client: httpx.Client, path: str) -> str:
    with client.stream("GET", path) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                return line
    raise AssertionError("no event")


def test_no_secret_reaches_a_page_an_answer_a_stream_or_the_metrics(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    keys = [*SECRETS, LIMITED, REVOKED]
    sim = sim_server(
        keys={
            SECRETS[0]: KeyLimits(),
            SECRETS[1]: KeyLimits(),
            LIMITED: KeyLimits(rph=1, rph_left=0, rph_reset=3600),  # every request: 429
        },
        revoked=frozenset({REVOKED}),
    )
    write_job(tmp_path, sim.url, keys=keys)
    web = serve(tmp_path)
    c = web.client
    seen: list[str] = []

    def keep(r: httpx.Response) -> httpx.Response:
        seen.append(f"{r.request.method} {r.url}\n{r.headers}\n{r.text}")
        return r

    csv = accounts_csv(tmp_path / "accounts.csv", range(30), bad_row=True)
    r = keep(c.post("/api/jobs/accounts/start", files={"file": ("a.csv", csv.read_bytes())}))
    assert r.status_code == 202, r.text
    final = wait_state(c, "accounts", "finished")
    states = {k["key"]: k["state"] for k in final["keys"]}
    assert states["…4444"] == "disabled"  # the revoked key, with its reason, masked
    assert any(k["rate_limited"] for k in final["keys"])  # the limited key met 429s

    for path in [
        "/",
        "/jobs/accounts",
        "/jobs/nope",
        "/static/app.js",
        "/static/style.css",
        "/api/jobs",
        "/api/jobs/accounts",
        "/api/jobs/accounts/failures",
        "/api/jobs/nope",
        "/metrics",
        "/openapi.json",
    ]:
        keep(c.get(path))
    keep(c.post("/api/jobs/accounts/stop"))
    keep(c.post("/api/jobs/accounts/start", data={"mode": "bogus"}))
    keep(c.post("/api/jobs/accounts/retry", json={"ids": ["a1", "@line:4"]}))
    keep(c.post("/api/jobs/accounts/expedite", json={"ids": ["a2"]}))
    keep(c.post("/api/tickets", json={"job": "accounts"}))
    seen.append(first_event(c, "/api/jobs/accounts/events"))
    seen.append(first_event(c, "/api/events"))
    log = Path(final["run_log"]).read_text()
    everything = "\n".join([*seen, log])
    assert "…4444" in everything and "…1111" in everything  # masked keys are shown
    for secret in keys:
        assert secret not in everything
        assert secret[:-4] not in everything  # nor the part a mask hides


def test_with_a_token_the_api_and_metrics_need_it_and_pages_do_not(
    tmp_path: Path, serve: ServeFactory
) -> None:
    write_job(tmp_path, "http://127.0.0.1:9")
    web = serve(tmp_path, token=TOKEN)
    anonymous = httpx.Client(base_url=web.url, timeout=10)
    for method, path in [
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/accounts"),
        ("GET", "/metrics"),
        ("POST", "/api/jobs/accounts/start"),
        ("POST", "/api/jobs/accounts/stop"),
        ("POST", "/api/tickets"),
        ("GET", "/api/jobs/accounts/events"),
    ]:
        r = anonymous.request(method, path)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"].startswith("a token is needed")
        assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = anonymous.request(method, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    for page in ["/", "/jobs/accounts", "/static/app.js", "/openapi.json"]:
        assert anonymous.get(page).status_code == 200
    assert web.client.get("/api/jobs").status_code == 200
    assert web.client.get("/metrics").status_code == 200

    # EventSource cannot send the header: a ticket opens one job's stream, briefly.
    ticket = web.client.post("/api/tickets", json={"job": "accounts"}).json()
    assert ticket["expires_in"] == 120
    assert TOKEN not in json.dumps(ticket)
    events = f"/api/jobs/accounts/events?ticket={ticket['ticket']}"
    assert first_event(anonymous, events).startswith("data: {")
    assert anonymous.get(f"/api/events?ticket={ticket['ticket']}").status_code == 401
    assert anonymous.get(f"/api/jobs/accounts?ticket={ticket['ticket']}").status_code == 401
    guard = web.dashboard.guard
    old = guard.ticket("accounts", now=time.time() - 600)
    assert anonymous.get(f"/api/jobs/accounts/events?ticket={old}").status_code == 401
    forged = ticket["ticket"].split(".")[0] + "." + "0" * 64
    assert anonymous.get(f"/api/jobs/accounts/events?ticket={forged}").status_code == 401
    anonymous.close()


def test_a_loopback_server_answers_only_to_loopback_names_and_same_site_posts(
    tmp_path: Path, serve: ServeFactory
) -> None:
    write_job(tmp_path, "http://127.0.0.1:9")
    web = serve(tmp_path)
    port = web.server.port
    rebound = web.client.get("/api/jobs", headers={"Host": f"attacker.example:{port}"})
    assert rebound.status_code == 421
    assert web.client.get("/api/jobs", headers={"Host": f"localhost:{port}"}).status_code == 200

    stop = "/api/jobs/accounts/stop"
    other = web.client.post(stop, headers={"Origin": "http://attacker.example"})
    assert other.status_code == 403
    assert web.client.post(stop, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    same = web.client.post(stop, headers={"Origin": web.url})
    assert same.status_code == 409  # through the checks; nothing is running


def test_upload_names_cannot_leave_the_upload_folder(
    tmp_path: Path, sim_server: SimFactory, serve: ServeFactory
) -> None:
    sim = sim_server()
    jobs = tmp_path / "jobs"
    write_job(jobs, sim.url)
    web = serve(jobs)
    csv = accounts_csv(tmp_path / "accounts.csv", range(3)).read_bytes()
    for n, name in enumerate(["../../escape.csv", "..\\..\\escape.csv", "/tmp/escape.csv"]):
        body = csv + f"a{100 + n},x,no\n".encode()  # new bytes: a new file each time
        r = web.client.post("/api/jobs/accounts/start", files={"file": (name, body)})
        assert r.status_code == 202, r.text
        assert r.json()["upload"]["name"] == "escape.csv"
        wait_state(web.client, "accounts", "finished")
    inbox = jobs / ".paceline" / "uploads" / "accounts"
    kept = sorted(p.name for p in inbox.iterdir() if p.suffix == ".csv")
    assert len(kept) == 3 and all(k.endswith("-escape.csv") for k in kept)
    assert not list(tmp_path.rglob("escape.csv"))
    assert not Path("/tmp/escape.csv").exists()
