"""Take docs/dashboard.png: the job page of an account-research run, mid-way.

Everything is local: the simulated provider on loopback (one key with a tight limit, so it
cools), `paceline serve` in this process, and Debian's chromium driven by Playwright.

    .venv/bin/python docs/screenshot.py [OUTPUT.png]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from paceline.sim import KeyLimits, SimConfig, SimServer, parse_latency
from paceline.web.app import Server, create_app
from paceline.web.jobs import Jobs

KEYS = ["sk-demo-aaaaaaaaaaaaaaaa1f3a", "sk-demo-bbbbbbbbbbbbbbbb7c21", "sk-demo-cccccccccccc04e9"]
JOB = """
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    "account_research",
    source=pl.Upload(format="csv", id="account_id"),
    sink=pl.SQLiteSink(HERE / "research.db", table="accounts"),
    keys=pl.KeyPool({keys!r}, rpm=1500),
    prices={{"gpt-4o-mini": pl.Price(input=0.15, output=0.60)}},
    retries=4,
)


@job.task
async def research(item, ctx):
    if item.data["domain"].endswith(".invalid"):
        raise pl.Permanent("HTTP 404 Not Found from the company registry")
    body = {{"model": "gpt-4o-mini", "max_tokens": 150,
             "messages": [{{"role": "user", "content": "Profile " + item.data["name"]}}]}}
    r = await ctx.http.post({url!r} + "/v1/chat/completions", json=body,
                            cost=pl.Cost(tokens=200))
    r.raise_for_status()
    return {{"profile": r.json()["choices"][0]["message"]["content"]}}
"""
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main(output: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="paceline-shot-"))
    limits = {KEYS[0]: KeyLimits(), KEYS[1]: KeyLimits(), KEYS[2]: KeyLimits(rpm=30)}
    config = SimConfig(keys=limits, latency=parse_latency("uniform:0.3,0.9"), seed=7)
    with SimServer(config) as sim:
        (folder / "job.py").write_text(JOB.format(keys=KEYS, url=sim.url))
        rows = ["account_id,name,domain"]
        for n in range(6000):
            domain = f"acme{n}.invalid" if n % 97 == 13 else f"acme{n}.example"
            rows.append(f"acct-{n:05d},Acme {n} Ltd,{domain}")
        rows.insert(120, "acct-bad,missing a field")
        (folder / "accounts.csv").write_text("\n".join(rows) + "\n")
        app = create_app(Jobs.load([folder], print))
        with Server(app, "127.0.0.1", 0) as server:
            base = server.url
            with (folder / "accounts.csv").open("rb") as f:
                r = httpx.post(
                    f"{base}/api/jobs/account_research/start",
                    files={"file": ("accounts.csv", f)},
                    data={"mode": "parallel", "concurrency": "48"},
                    timeout=60,
                )
            r.raise_for_status()
            time.sleep(12)
            with sync_playwright() as p:
                context = p.chromium.launch_persistent_context(
                    str(folder / "profile"),
                    executable_path="/usr/bin/chromium",
                    headless=True,
                    args=ARGS,
                    viewport={"width": 1100, "height": 1000},
                    device_scale_factor=1,
                )
                page = context.new_page()
                page.goto(f"{base}/jobs/account_research")
                page.wait_for_selector("#keys tbody tr")
                time.sleep(2.5)
                page.screenshot(path=str(output), full_page=True)
                context.close()
            httpx.post(f"{base}/api/jobs/account_research/stop", timeout=30)
            time.sleep(2)
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "dashboard.png")
