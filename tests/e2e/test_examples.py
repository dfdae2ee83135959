"""Each example in examples/ runs end to end against the simulated provider."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
from tests.conftest import SimFactory, run_cli

from paceline.sim import KeyLimits

EXAMPLES = Path(__file__).parents[2] / "examples"


def copy_example(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(EXAMPLES / name, target)
    return target / "job.py"


def test_doc_migration(tmp_path: Path, sim_server: SimFactory) -> None:
    sim = sim_server(latency="uniform:0.01,0.05", limits=KeyLimits(rpm=600, rpd=1500))
    job = copy_example("doc_migration", tmp_path)
    env = {
        "SIM_URL": sim.url,
        "GEMINI_KEY": "AIza-example-key-0000000001,AIza-example-key-0000000002",
        "DOC_RPM": "600",
    }
    result = run_cli("run", job, env=env)
    assert result.returncode == 0, result.stderr
    db = sqlite3.connect(job.parent / "migrated.db")
    rows = db.execute("SELECT id, diagram FROM documents").fetchall()
    db.close()
    assert len(rows) == 40 and all(d.startswith("Summary: Describe a diagram") for _, d in rows)
    keys = run_cli("keys", job, env=env)
    assert keys.stdout.count("today 20/1,500") == 2  # 40 documents over two keys
    assert "600/minute" in keys.stdout and "1500/day" in keys.stdout


def test_repo_ingestion(tmp_path: Path, sim_server: SimFactory, pg_dsn: str) -> None:
    sim = sim_server(latency="0.01", limits=KeyLimits(rph=36_000))
    job = copy_example("repo_ingestion", tmp_path)
    env = {
        "SIM_URL": sim.url,
        "PG_DSN": pg_dsn,
        "REPO_RPH": "36000",
        "GITHUB_TOKEN": "ghp_example_token_000000000001,ghp_example_token_000000000002",
    }
    assert run_cli("run", job, env=env).returncode == 0
    again = run_cli("run", job, env=env)  # safe to rerun: nothing new, nothing doubled
    assert again.returncode == 0 and "0 done, 0 failed" in again.stdout
    with psycopg.connect(pg_dsn) as conn:
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM repositories"
        ).fetchone()
        commits = conn.execute(
            "SELECT latest_commits FROM repositories WHERE id = 'octo/project-00'"
        ).fetchone()
    assert (count, distinct) == (30, 30)
    assert commits is not None and len(commits[0]) == 5
    assert run_cli("verify", job, env=env).returncode == 0


def test_page_fix(tmp_path: Path, sim_server: SimFactory) -> None:
    sim = sim_server(latency="0.01")
    job = copy_example("page_fix", tmp_path)
    env = {"SIM_URL": sim.url, "OPENAI_KEY": "sk-example-key-000000000001"}
    first = run_cli("run", job, "--per-day", "15", env=env)
    assert first.returncode == 0, first.stderr
    assert "today's item budget" in first.stdout
    status = json.loads(run_cli("status", job, "--json", env=env).stdout)
    assert (status["done"], status["skipped"]) == (15, 20)
    pages = [json.loads(line) for line in (job.parent / "pages.jsonl").read_text().splitlines()]
    broken = sorted((p for p in pages if "<font" in p["html"]), key=lambda p: -p["views"])
    db = sqlite3.connect(job.parent / "fixed.db")
    fixed = {r[0] for r in db.execute("SELECT id FROM pages")}
    db.close()
    assert fixed == {p["page_id"] for p in broken[:15]}  # the most viewed first
    least = broken[-1]["page_id"]
    out = run_cli("expedite", job, least, env=env)
    assert f"{least}: expedited (was pending)" in out.stdout


def test_account_research(tmp_path: Path, sim_server: SimFactory) -> None:
    sim = sim_server(latency="0.01", limits=KeyLimits(rpm=500, tpm=200_000))
    job = copy_example("account_research", tmp_path)
    env = {
        "SIM_URL": sim.url,
        "OPENAI_KEY": "sk-example-key-000000000001,sk-example-key-000000000002",
    }
    result = run_cli("run", job, env=env)
    assert result.returncode == 0, result.stderr
    assert "cost: $" in result.stdout and "/item" in result.stdout
    status = json.loads(run_cli("status", job, "--json", env=env).stdout)
    assert status["done"] == 40 and status["cost_usd"] > 0
    assert sum(k["tokens"] for k in status["keys"]) > 0
    db = sqlite3.connect(job.parent / "research.db")
    categories = {r[0] for r in db.execute("SELECT category FROM accounts")}
    db.close()
    assert categories <= {"enterprise", "mid-market", "startup", "public sector"}

    fresh = copy_example("account_research", tmp_path / "again")
    budget = run_cli("run", fresh, "--budget", "0.0005", env=env)
    assert budget.returncode == 0, budget.stderr
    assert "stopped: the budget (--budget) is spent" in budget.stdout
    spent = json.loads(run_cli("status", fresh, "--json", env=env).stdout)
    assert 0 < spent["done"] < 40
    assert spent["cost_usd"] >= 0.0005  # what was spent is kept, with the key usage
    assert sum(k["requests"] for k in spent["keys"]) >= 2 * spent["done"]
    again = run_cli("run", fresh, "--budget", "0.0005", env=env)
    assert again.returncode == 0 and "0 done, 0 failed" in again.stdout
    assert "stopped: the budget (--budget) is spent" in again.stdout


def test_user_migration(tmp_path: Path, pg_dsn: str) -> None:
    job = copy_example("user_migration", tmp_path)
    subprocess.run(
        [sys.executable, str(job.parent / "make_legacy_db.py"), "60"],
        check=True,
        capture_output=True,
    )
    env = {"PG_DSN": pg_dsn, "BCRYPT_ROUNDS": "4"}
    dry = run_cli("run", job, "--dry-run", env=env)
    assert dry.returncode == 0 and "would run:      60 (60 new" in dry.stdout
    result = run_cli("run", job, env=env)
    assert result.returncode == 0, result.stderr
    check = run_cli("verify", job, "--checksum", env=env)
    assert check.returncode == 0, check.stdout
    assert "sink:    60 rows" in check.stdout
    import bcrypt

    with psycopg.connect(pg_dsn) as conn:
        email, digest = conn.execute(
            "SELECT email, password_hash FROM users WHERE id = '7'"
        ).fetchone()
    legacy = sqlite3.connect(job.parent / "legacy.db")
    (password,) = legacy.execute("SELECT password FROM users WHERE id = 7").fetchone()
    legacy.close()
    assert email == "user7@example.org"
    assert bcrypt.checkpw(password.encode(), digest.encode())
    # No plaintext password is left in any file of paceline's store.
    legacy = sqlite3.connect(job.parent / "legacy.db")
    passwords = [p for (p,) in legacy.execute("SELECT password FROM users") if p]
    legacy.close()
    store_files = [p for p in (job.parent / ".paceline").iterdir() if p.is_file()]
    assert store_files
    for path in store_files:
        data = path.read_bytes()
        leaked = [p for p in passwords if p.encode() in data]
        assert not leaked, f"{path.name} holds {len(leaked)} plaintext password(s)"
