"""Fix only the pages that need it, most-viewed first, within a daily budget.

`needs` skips pages already fine (counted as skipped); `priority` puts the most-viewed
first; `paceline run --per-day N` caps a day's work; and when a user opens a page that is
still broken, the application calls `paceline expedite JOBFILE PAGE_ID` (or
`job.expedite(page_id)`) and the running job fixes it within a second or two while the
bulk goes on ("lazy" migration).
"""

import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
API = os.environ.get("SIM_URL", "http://127.0.0.1:8800")

job = pl.Job(
    "page_fix",
    source=pl.JSONL(HERE / "pages.jsonl", id="page_id"),
    sink=pl.SQLiteSink(HERE / "fixed.db", table="pages"),
    keys=pl.KeyPool.from_env("OPENAI_KEY", env_file=HERE / ".env", rpm=600),
    needs=lambda page: "<font" in page.data["html"] or "<center" in page.data["html"],
    priority=lambda page: page.data["views"],
)


@job.task
async def fix(page: pl.Item, ctx: pl.Context) -> dict[str, object]:
    r = await ctx.http.post(
        f"{API}/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "max_tokens": 200,
            "messages": [
                {"role": "user", "content": "Rewrite as clean HTML5: " + page.data["html"]}
            ],
        },
    )
    r.raise_for_status()
    return {"views": page.data["views"], "html": r.json()["choices"][0]["message"]["content"]}
