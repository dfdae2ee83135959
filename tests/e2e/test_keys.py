"""Keys as a user meets them: secrets never shown, daily quotas, `keys` and `plan`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from tests.conftest import SimFactory, run_cli

from paceline.sim import KeyLimits

GOOD = ["AIzaSyGOOD-secret-one-0000000000000001", "AIzaSyGOOD-secret-two-0000000000000002"]
REVOKED = "AIzaSyREVOKED-secret-000000000000000003"

GEMINI_JOB = """
import os
from pathlib import Path
import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    "gem",
    source=[{{"id": f"doc-{{n}}", "n": n}} for n in range({items})],
    sink=pl.JSONLSink(HERE / "out.jsonl"),
    keys=pl.KeyPool.from_env("GEM_KEY", auth="query:key", {limits}),
    retries=4,
    backoff=pl.Backoff(base=0.01, cap=0.05),
)

@job.task
async def work(item, ctx):
    route = "models/gemini-2.0-flash:generateContent"
    if {fail} and item.data["n"] % 7 == 3:
        route = "no-such-route"  # answered 404: a permanent failure
    url = os.environ["SIM_URL"] + "/v1beta/" + route
    r = await ctx.http.post(url, json={{"contents": [{{"parts": [{{"text": item.id}}]}}]}})
    r.raise_for_status()
    return {{"text": r.json()["candidates"][0]["content"]["parts"][0]["text"]}}
"""


def gemini_job(folder: Path, items: int, limits: str = "", fail: bool = False) -> Path:
    job = folder / "job.py"
    job.write_text(GEMINI_JOB.format(items=items, limits=limits, fail=fail))
    return job


def key_env(keys: list[str]) -> dict[str, str]:
    return {f"GEM_KEY_{n}": key for n, key in enumerate(keys, 1)}


def test_no_secret_appears_in_anything_a_run_produces(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    # The provider allows each good key 2 requests at a time (paceline is not told),
    # rejects one key, fails 10 % of requests, and one item in seven asks for a route
    # that does not exist.
    sim = sim_server(
        latency="0.05",
        limits=KeyLimits(concurrency=2),
        revoked=frozenset({REVOKED}),
        error_rate=0.1,
        seed=5,
    )
    job = gemini_job(tmp_path, 40, fail=True)
    env = {"SIM_URL": sim.url, **key_env([*GOOD, REVOKED])}
    run = run_cli("run", job, "--log-interval", "0.2", cwd=tmp_path, env=env)
    assert run.returncode == 1, run.stderr  # the missing-model items failed for good
    status = run_cli("status", job, "--json", cwd=tmp_path, env=env)
    keys = run_cli("keys", job, cwd=tmp_path, env=env)
    plan = run_cli("plan", job, cwd=tmp_path, env=env)
    data = json.loads(status.stdout)
    assert data["failed"] == 6 and data["done"] == 34
    states = {k["key"]: k["state"] for k in data["keys"]}
    assert states["…0003"] == "disabled"
    assert sum(k["rate_limited"] for k in data["keys"]) > 0, "the scenario must produce 429s"
    assert any("HTTP 404" in f["error"] for f in data["recent_failures"])

    produced = {
        "run stdout": run.stdout, "run stderr": run.stderr, "status": status.stdout,
        "keys": keys.stdout + keys.stderr, "plan": plan.stdout + plan.stderr,
    }  # fmt: skip
    for path in [*tmp_path.rglob("*.db*"), tmp_path / "out.jsonl"]:
        produced[str(path)] = path.read_bytes().decode("latin-1")
    for secret in [*GOOD, REVOKED]:
        for where, text in produced.items():
            assert secret not in text, f"secret of {secret[-4:]} found in {where}"
            assert secret[:-4] not in text, f"most of {secret[-4:]} found in {where}"
    assert "key …0003 disabled for this run: key rejected" in run.stderr


def test_daily_quota_is_remembered_across_runs_and_until_quota_stops_cleanly(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="0")
    job = gemini_job(tmp_path, 30, 'limits=["5/day", "600/minute"]')
    env = {"SIM_URL": sim.url, **key_env(GOOD)}
    first = run_cli("run", job, "--until-quota", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "stopped: every key is out of quota until" in first.stdout
    status = json.loads(run_cli("status", job, "--json", cwd=tmp_path, env=env).stdout)
    spent = [d["used"] for k in status["keys"] for d in k["today"]]
    assert spent == [5, 5]
    assert status["done"] + status["failed"] == 10

    # A new process knows today's quota is spent: it sends nothing and stops again.
    again = run_cli("run", job, "--until-quota", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "stopped: every key is out of quota" in again.stdout
    assert httpx.get(f"{sim.url}/_sim/stats").json()["total"]["requests"] == 10
    keys = run_cli("keys", job, cwd=tmp_path, env=env)
    assert keys.stdout.count("today 5/5") == 2
    assert "5/day" in keys.stdout


def test_plan_answers_how_long_and_how_much(tmp_path: Path) -> None:
    job = gemini_job(tmp_path, 9_600, "rpm=15, rpd=1200")
    env = key_env(
        [*GOOD, "AIzaSyTHIRD-key-000000000000000000003", "AIzaSyFOURTH-key-00000000000004"]
    )
    plan = run_cli("plan", job, cwd=tmp_path, env=env)
    assert plan.returncode == 0, plan.stderr
    assert "4 key(s)" in plan.stdout
    assert "60 requests/minute, 4,800 requests/day" in plan.stdout
    assert "4,800/day at full speed" in plan.stdout
    assert "pending:            9,600 items" in plan.stdout
    assert "finish:             in about" in plan.stdout


def test_read_only_commands_work_where_the_keys_are_not(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server(latency="0.01", keys={GOOD[0]: KeyLimits(rpm=600)})
    job = gemini_job(tmp_path, items=5)
    env = {"SIM_URL": sim.url, **key_env(GOOD[:1])}
    assert run_cli("run", job, cwd=tmp_path, env=env).returncode == 0
    # Another machine: the job file loads, its state reads, the keys it used show.
    elsewhere = {"SIM_URL": sim.url}
    status = run_cli("status", job, "--json", cwd=tmp_path, env=elsewhere)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["done"] == 5
    assert [k["key"] for k in data["keys"]] == ["…0001"]
    for command in ("keys", "plan", "failures", "export"):
        result = run_cli(command, job, cwd=tmp_path, env=elsewhere)
        assert result.returncode == 0, (command, result.stderr)
    # A run needs them: one line saying what to set, exit 2.
    run = run_cli("run", job, cwd=tmp_path, env=elsewhere)
    assert run.returncode == 2
    assert "no keys found: set GEM_KEY_1" in run.stderr
    assert "Traceback" not in run.stderr
