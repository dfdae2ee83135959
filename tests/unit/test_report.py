"""What people read: the dashboard at any width, the summary, money."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from paceline.cost import money
from paceline.engine import RunResult, Snapshot
from paceline.report import LiveReporter, summary_text


def snapshot(**changes: Any) -> Snapshot:
    base: dict[str, Any] = {
        "job": "account-research-with-a-rather-long-name",
        "total": 12_000, "done": 7_345, "failed": 12, "pending": 4_600, "skipped": 0,
        "running": 43, "retrying": 5, "source_done": True, "elapsed": 3_700.0,
        "rate_now": 41.5, "rate_avg": 39.9, "rate_peak": 44.0, "eta": 112.0,
        "done_this_run": 7_000, "failed_this_run": 12,
        "errors": [("acct-17 (attempt 3, failed)", "HTTP 404 Not Found from GET " + "x" * 200)],
        "keys": [
            {"key": f"…a1b{n}", "requests": 1_210, "tokens": 93_000, "rate_limited": 2,
             "errors": 0, "state": "cooling until 14:03:07", "until": None, "reason": None,
             "limits": ["500/minute"], "today": [{"unit": "requests", "used": 1_210,
                                                   "limit": 1_500}]}
            for n in range(4)
        ],
        "duplicates": 0, "stopping": None, "notes": ["key …a1b2: learned limit 500/minute"],
        "cost_total": 0.0042,
    }  # fmt: skip
    base.update(changes)
    return Snapshot(**base)


def rendered(width: int, s: Snapshot) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(LiveReporter(console).render(s))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [60, 80, 132])
def test_the_dashboard_fits_the_terminal_and_keeps_what_matters(width: int) -> None:
    lines = rendered(width, snapshot())
    assert all(len(line) <= width for line in lines), [len(x) for x in lines]
    text = "\n".join(lines)
    for needed in ("61.3%", "ETA", "done 7,345", "…a1b3", "1,210/1,500", "cooling", "$0.0042"):
        assert needed in text, (needed, text)
    assert ("requests" in text) == (width >= 80)  # the wide form has every column


def test_money_below_a_cent_shows_its_digits() -> None:
    assert [money(x) for x in (0, 0.0042, 0.000013, 0.5, 1234.567)] == [
        "$0.00", "$0.0042", "$0.000013", "$0.50", "$1,234.57",
    ]  # fmt: skip


def result(s: Snapshot, **changes: Any) -> RunResult:
    return RunResult(s, False, None, "store.db", "sink", jobfile=changes.get("jobfile"))


def test_the_summary_names_the_job_file_and_some_duplicate_ids() -> None:
    s = snapshot(duplicates=3, duplicate_examples=["acct-1", "acct-9"], failed=2)
    text = summary_text(result(s, jobfile="jobs/research.py"))
    assert "paceline failures jobs/research.py" in text
    assert "paceline retry jobs/research.py" in text
    assert "duplicate ids in the source (skipped): 3 (e.g. 'acct-1', 'acct-9')" in text


def test_the_summary_of_an_empty_source_says_so() -> None:
    s = snapshot(total=0, done=0, failed=0, pending=0, running=0, retrying=0, keys=[])
    assert "the source is empty" in summary_text(result(s))
