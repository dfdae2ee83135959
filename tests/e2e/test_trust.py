"""Trust: a failing disk or a signal at the wrong moment ends a run cleanly, losing nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import paceline_cmd, run_cli

FULL_DISK_JOB = """
import errno
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent


def rows_to_disk(rows):
    if (HERE / "disk-full").exists():
        raise OSError(errno.ENOSPC, "No space left on device")
    with (HERE / "rows.txt").open("a") as f:
        f.writelines(row["id"] + "\\n" for row in rows)


job = pl.Job("disk", source=[{"id": f"i{n:04d}"} for n in range(300)], sink=rows_to_disk,
             concurrency=4)


@job.task
async def work(item, ctx):
    return {"ok": True}
"""


def test_a_full_disk_stops_the_run_with_its_summary_and_the_cause(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(FULL_DISK_JOB)
    (tmp_path / "disk-full").touch()
    result = run_cli("run", job, "--progress", "none")
    assert result.returncode == 2
    assert "paceline: job 'disk' stopped" in result.stdout  # the summary is there
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("paceline: error: ") and "No space left on device" in line
    assert "rows_to_disk" in line  # it names the sink
    (tmp_path / "disk-full").unlink()
    again = run_cli("run", job, "--progress", "none")
    assert again.returncode == 0, again.stderr
    assert "rollback" not in again.stderr
    ids = (tmp_path / "rows.txt").read_text().split()
    assert sorted(set(ids)) == [f"i{n:04d}" for n in range(300)]


def test_a_signal_in_the_first_moments_exits_130_with_one_line(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(FULL_DISK_JOB)
    for sig in (signal.SIGINT, signal.SIGTERM):
        for delay in (0.05, 0.15, 0.3):
            proc = subprocess.Popen(
                paceline_cmd("run", job, "--progress", "none"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(delay)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=60)
            if proc.returncode == 0:
                continue  # it finished before the signal landed
            assert proc.returncode == 130, (sig, delay, proc.returncode, err)
            assert "Traceback" not in err and "Traceback" not in out, err
            assert len(err.strip().splitlines()) <= 2, err


def test_status_shows_the_last_run_failed_on_an_error(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(FULL_DISK_JOB)
    (tmp_path / "disk-full").touch()
    run_cli("run", job, "--progress", "none")
    status = json.loads(run_cli("status", job, "--json").stdout)
    assert status["state"] == "failed" and status["done"] == 0


CPU_JOB = """
import time

import paceline as pl


def burn(n):
    time.sleep(0.2)
    return n * 2


job = pl.Job("cpu", source=[{"id": str(n), "n": n} for n in range(2000)], concurrency=4)


@job.task
async def work(item, ctx):
    return {"v": await ctx.run_cpu(burn, item.data["n"])}
"""


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def test_a_killed_run_leaves_no_process_pool_behind(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(CPU_JOB)
    proc = subprocess.Popen(
        paceline_cmd("run", job, "--progress", "none"),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_processes_mentioning(str(tmp_path))) < 2:
        time.sleep(0.1)  # the pool's processes carry the job's folder in their command line
    assert _processes_mentioning(str(tmp_path)), "the pool never started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _processes_mentioning(str(tmp_path)):
        time.sleep(0.1)
    assert _processes_mentioning(str(tmp_path)) == []


LEAKY_JOB = """
import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
keys = pl.KeyPool.from_env("LEAKY_KEY_")
KEY = keys.keys[0].secret
WHERE = os.environ["LEAK_WHERE"]

if WHERE == "load":
    raise RuntimeError(f"cannot start with {KEY}")


def needs(item):
    if WHERE == "needs" and item.id == "i3":
        raise ValueError(f"needs choked on {KEY}")
    return True


def sink(rows):
    if WHERE == "sink":
        raise OSError(5, f"disk said no to {KEY}")
    with (HERE / "rows.txt").open("a") as f:
        f.writelines(repr(r) + "\\n" for r in rows)


job = pl.Job("leaky", source=[{"id": f"i{n}"} for n in range(10)], sink=sink, keys=keys,
             needs=needs, retries=0)


@job.task
async def work(item, ctx):
    if WHERE == "task" and item.id == "i5":
        raise ValueError(f"the task saw {KEY} and {ctx.job}")
    return {"ok": True}
"""

LEAKY_KEY = "sk-live-leaky-0123456789abcdefSECRET"


@pytest.mark.parametrize("where", ["load", "needs", "sink", "task"])
def test_no_key_in_any_text_whatever_fails(tmp_path: Path, where: str) -> None:
    job = tmp_path / "job.py"
    job.write_text(LEAKY_JOB)
    env = {"LEAKY_KEY_1": LEAKY_KEY, "LEAK_WHERE": where}
    result = run_cli("run", job, "--progress", "log", env=env)
    assert result.returncode != 0 or where == "needs"
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    for cmd in (("status", job), ("failures", job), ("export", job)):
        shown = run_cli(*cmd, env=env)
        texts[cmd[0]] = shown.stdout + shown.stderr
    for path in [*tmp_path.rglob("*")]:
        if path.is_file() and path.name != "job.py":
            texts[str(path)] = path.read_bytes().decode(errors="replace")
    leaks = [name for name, text in texts.items() if LEAKY_KEY in text or LEAKY_KEY[-12:] in text]
    assert not leaks, leaks
    assert "…" in result.stdout + result.stderr or where == "load"  # shown masked instead
