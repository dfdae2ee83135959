"""The dashboard in a real browser: Debian's chromium driven by Playwright, against
`paceline serve` run as a subprocess and jobs run against the simulated provider.
(docs/screenshot.py takes the README's picture the same way.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import SimFactory, paceline_cmd, read_jsonl
from tests.web.jobs import accounts_csv, write_job

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags chromium reaches out at start, and this
# machine's closed network refuses it; the sandbox needs a kernel feature root lacks.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("PACELINE_REQUIRE_SERVICES") == "1":
            pytest.fail("chromium is required: apt-get install chromium")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1200, "height": 1400},
        )
        context.set_default_timeout(20_000)
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture
def dashboard(tmp_path: Path, sim_server: SimFactory) -> Iterator[str]:
    """`paceline serve` on a free port, serving an upload job; yields its URL."""
    sim = sim_server(latency="fixed:0.02")
    write_job(tmp_path / "jobs", sim.url)
    proc = subprocess.Popen(
        paceline_cmd("serve", tmp_path / "jobs", "--port", "0"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        found = re.search(r"(http://127\.0\.0\.1:\d+)", proc.stdout.readline())
        assert found
        yield found.group(1)
    finally:
        subprocess.run(paceline_cmd("stop", tmp_path / "jobs" / "accounts.py"), check=False,
                       capture_output=True, timeout=30)  # fmt: skip
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)


def test_upload_run_watch_retry_stop_and_restart_in_a_browser(
    tmp_path: Path, dashboard: str, page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    jobs = tmp_path / "jobs"
    (jobs / "broken").touch()  # items marked fail=yes fail while this file exists
    first = accounts_csv(tmp_path / "accounts.csv", range(40), failing=frozenset({10, 20}))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))

    # The jobs list links to the job page.
    page.goto(dashboard)
    row = page.locator('tr[data-job="accounts"]')
    expect(row).to_contain_text("not started")
    row.get_by_role("link", name="accounts").click()
    expect(page.locator("#job-name")).to_have_text("accounts")
    expect(page.locator("#upload-files")).to_contain_text("Nothing uploaded yet")

    # Upload a CSV and start it in parallel; the page follows it to 100 %.
    page.set_input_files("#file", str(first))
    page.check('input[name="mode"][value="parallel"]')
    page.fill("#concurrency", "8")
    page.click("#start")
    expect(page.locator("#message")).to_contain_text("run started")
    expect(page.locator("#pct")).to_have_text("100.0 %")
    expect(page.locator("#state")).to_have_text("finished")
    expect(page.locator("#done")).to_have_text("38")
    expect(page.locator("#failed")).to_have_text("2")
    expect(page.locator("#upload-files")).to_contain_text("accounts.csv")
    expect(page.locator("#keys tbody tr")).to_have_count(2)
    expect(page.locator("#keys")).to_contain_text("…1111")

    # The failed items are listed with their errors; one is put back and run again.
    failed = page.locator('#failures tr[data-id="a10"]')
    expect(failed).to_contain_text("Permanent: item a10 is broken")
    (jobs / "broken").unlink()
    failed.get_by_role("button", name="Retry").click()
    expect(page.locator("#message")).to_contain_text("a10 put back first in line")
    expect(page.locator("#failed")).to_have_text("1")
    page.click("#start")
    expect(page.locator("#done")).to_have_text("39")
    expect(page.locator("#state")).to_have_text("finished")

    # A second file, one at a time: stopped while it runs...
    second = accounts_csv(tmp_path / "more.csv", range(100, 400))
    page.set_input_files("#file", str(second))
    page.check('input[name="mode"][value="sequential"]')
    page.click("#start")
    expect(page.locator("#state")).to_have_text("running")
    expect(page.locator("#done")).not_to_have_text("39")
    page.click("#stop")
    expect(page.locator("#message")).to_contain_text("asked 1 worker(s) to stop")
    expect(page.locator("#state")).to_have_text("stopped", timeout=10_000)
    done_at_stop = int(page.locator("#done").inner_text().replace(",", ""))
    assert 39 < done_at_stop < 339

    # ...an item expedited by id, and another run, in parallel, finishes the rest.
    page.fill("#expedite-ids", "a399")
    page.click('#expedite-form button[type="submit"]')
    expect(page.locator("#message")).to_contain_text("a399: expedited (was pending)")
    page.check('input[name="mode"][value="parallel"]')
    page.fill("#concurrency", "16")
    page.click("#start")
    expect(page.locator("#pct")).to_have_text("100.0 %")
    expect(page.locator("#state")).to_have_text("finished")
    expect(page.locator("#done")).to_have_text("339")
    expect(page.locator("#failed")).to_have_text("1")

    rows = read_jsonl(jobs / "out-accounts.jsonl")
    assert len(rows) == len({r["id"] for r in rows}) == 339
    # The page polled nothing: its numbers came over one event stream.
    assert not [r for r in requests if r.startswith("GET") and r.endswith("/api/jobs/accounts")]
    streams = [r for r in requests if "/api/jobs/accounts/events" in r]
    assert len(streams) == 1, streams

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_the_page_asks_for_the_token_once(
    tmp_path: Path, sim_server: SimFactory, page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    write_job(tmp_path / "jobs", "http://127.0.0.1:9")
    env = {**os.environ, "PACELINE_TOKEN": "let-me-in-0123"}
    proc = subprocess.Popen(
        paceline_cmd("serve", tmp_path / "jobs", "--port", "0"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        found = re.search(r"(http://127\.0\.0\.1:\d+)", proc.stdout.readline())
        assert found
        page.goto(found.group(1))
        form = page.locator("#token-form")
        expect(form).to_be_visible()
        page.fill('#token-form input[name="token"]', "let-me-in-0123")
        page.click('#token-form button[type="submit"]')
        expect(form).to_be_hidden()
        expect(page.locator('tr[data-job="accounts"]')).to_contain_text("not started")
        page.click('tr[data-job="accounts"] a')
        expect(page.locator("#state")).to_have_text("not started")
        expect(form).to_be_hidden()  # kept for the tab: not asked again
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
