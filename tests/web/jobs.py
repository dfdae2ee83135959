"""Job files and helpers for the web tests: real job files run against the simulated
provider, served by a real server on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

# Known key strings: no page, answer, stream or metric may ever show them.
SECRETS = ["sk-web-secret-aaaaaaaaaaaa1111", "sk-web-secret-bbbbbbbbbbbb2222"]

WEB_JOB = """
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    {name!r},
    source={source},
    sink=pl.JSONLSink(HERE / "out-{name}.jsonl"),
    keys=pl.KeyPool({keys!r}),
    retries=2,
    backoff=pl.Backoff(base=0.01, cap=0.05),
)


@job.task
async def work(item, ctx):
    if (HERE / "broken").exists() and item.data.get("fail") == "yes":
        raise pl.Permanent("item " + item.id + " is broken")
    body = {{"model": "m", "messages": [{{"role": "user", "content": "item " + item.id}}]}}
    r = await ctx.http.post({sim!r} + "/v1/chat/completions", json=body)
    r.raise_for_status()
    return {{"answer": r.json()["choices"][0]["message"]["content"]}}
"""


def write_job(
    folder: Path,
    sim_url: str,
    *,
    name: str = "accounts",
    upload: str | None = "csv",
    items: int = 0,
    keys: list[str] | None = None,
) -> Path:
    """A job file in ``folder``: an upload job (``upload="csv"`` or ``"jsonl"``, ids in
    ``account_id``), or with ``upload=None`` one reading ``items.jsonl`` of ``items`` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    if upload is not None:
        source = f"pl.Upload(format={upload!r}, id='account_id')"
    else:
        lines = "".join(f'{{"account_id": "i{n}", "n": {n}}}\n' for n in range(items))
        (folder / "items.jsonl").write_text(lines)
        source = "pl.JSONL(HERE / 'items.jsonl', id='account_id')"
    job = folder / f"{name}.py"
    job.write_text(WEB_JOB.format(name=name, source=source, keys=keys or SECRETS, sim=sim_url))
    return job


def accounts_csv(
    path: Path, ids: range, *, failing: set[int] = frozenset(), bad_row: bool = False
) -> Path:  # type: ignore[assignment]
    """A CSV of accounts ``a<n>``; ``failing`` ones fail while a ``broken`` file exists."""
    rows = ["account_id,name,fail"]
    rows += [f"a{n},Company {n},{'yes' if n in failing else 'no'}" for n in ids]
    if bad_row:
        rows.insert(3, "bad,row,with,too,many,fields")
    path.write_text("\n".join(rows) + "\n")
    return path


def wait_for(
    check: Callable[[], Any], *, timeout: float = 30.0, what: str = "the condition"
) -> Any:
    """Poll ``check`` every 0.1 s until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def status(client: httpx.Client, job: str) -> dict[str, Any]:
    r = client.get(f"/api/jobs/{job}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def wait_state(
    client: httpx.Client, job: str, *states: str, timeout: float = 30.0
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        s = status(client, job)
        return s if s["state"] in states else None

    result: dict[str, Any] = wait_for(reached, timeout=timeout, what=f"{job} to be {states}")
    return result


def kill_runs(client: httpx.Client, job: str) -> None:
    """Test hygiene: a run left going by a failed test is killed (runs are detached)."""
    try:
        s = status(client, job)
    except Exception:
        return
    for worker in s.get("workers") or []:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(worker["pid"]), signal.SIGKILL)
