"""CPU-heavy steps go to a process pool through ``ctx.run_cpu``."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import read_jsonl, run_cli

CPU_JOB = """
import os
from pathlib import Path

import bcrypt
import paceline as pl

HERE = Path(__file__).parent


def hash_password(password: str) -> tuple[str, int]:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode(), os.getpid()


job = pl.Job("users", source=[{"id": f"u{n}", "pw": f"pw-{n}"} for n in range(12)],
             sink=pl.JSONLSink(HERE / "out.jsonl"))


@job.task
async def migrate(item, ctx):
    digest, pid = await ctx.run_cpu(hash_password, item.data["pw"])
    return {"hash": digest, "hashed_in": pid, "task_in": os.getpid()}
"""


def test_run_cpu_hashes_on_other_processes_and_the_results_are_right(tmp_path: Path) -> None:
    import bcrypt

    (tmp_path / "job.py").write_text(CPU_JOB)
    result = run_cli("run", tmp_path / "job.py")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 12
    for row in rows:
        assert row["hashed_in"] != row["task_in"]
        assert bcrypt.checkpw(f"pw-{row['id'][1:]}".encode(), row["hash"].encode())
