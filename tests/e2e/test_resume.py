"""Resume, exactly once: SIGKILL a running `paceline run` again and again, then finish."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import SimFactory, paceline_cmd, read_jsonl, run_cli
from tests.e2e.jobs import expected_summary, write_sim_job

ITEMS = 2_500


def _done_count(store: Path) -> int:
    if not store.exists():
        return 0
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM items WHERE status='done'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.parametrize("sink", ["jsonl", "sqlite"])
def test_sigkill_at_random_moments_loses_nothing_and_writes_nothing_twice(
    tmp_path: Path, sim_server: SimFactory, sink: str
) -> None:
    sim = sim_server(latency="uniform:0.005,0.03", error_rate=0.02, seed=3)
    job = write_sim_job(tmp_path, ITEMS, sink=sink, concurrency=8)
    env = {**os.environ, "SIM_URL": sim.url}
    store = tmp_path / ".paceline" / "work.db"
    rng = random.Random(20261122)
    progress = []
    kills = 0
    while kills < 6:
        proc = subprocess.Popen(
            paceline_cmd("run", job),
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.4, 1.2))
        if proc.poll() is not None:
            break  # finished before we could kill it: the kills so far still count
        proc.kill()
        proc.wait()
        kills += 1
        progress.append(_done_count(store))
    assert kills >= 5, f"the job finished after only {kills} kills; make it longer"
    assert progress[-1] < ITEMS, "every kill must land while work remains"
    assert progress[-1] > progress[0], f"no progress across kills: {progress}"

    killed = json.loads(run_cli("status", job, "--json", cwd=tmp_path).stdout)
    assert (killed["state"], killed["running"]) == ("interrupted", 0)
    assert killed["done"] == progress[-1] and killed["total"] <= ITEMS

    final = run_cli("run", job, cwd=tmp_path, env={"SIM_URL": sim.url})
    assert final.returncode == 0, final.stderr + final.stdout

    status = json.loads(run_cli("status", job, "--json", cwd=tmp_path).stdout)
    assert (status["total"], status["done"], status["failed"]) == (ITEMS, ITEMS, 0)
    assert status["pending"] == status["running"] == 0

    if sink == "jsonl":
        text = (tmp_path / "out.jsonl").read_text()
        assert text.endswith("\n")
        rows = read_jsonl(tmp_path / "out.jsonl")  # a torn line would fail to parse here
    else:
        db = sqlite3.connect(tmp_path / "out.db")
        rows = [
            {"id": i, "n": n, "summary": s}
            for i, n, s in db.execute("SELECT id, n, summary FROM results")
        ]
        db.close()
    ids = [r["id"] for r in rows]
    assert len(ids) == ITEMS, f"{len(ids) - len(set(ids))} duplicate rows"
    assert set(ids) == {f"it-{n:05d}" for n in range(ITEMS)}
    for row in rows:
        n = int(row["id"][3:])
        assert row["n"] == n
        assert row["summary"] == expected_summary(row["id"], n)
