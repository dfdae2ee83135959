"""Migrate documents with an LLM: a diagram description per document, Gemini-style keys.

Keys come from GEMINI_KEY_1, GEMINI_KEY_2, … (or GEMINI_KEY=a,b); each has Gemini's free
tier limits by default (15 requests/minute, 1,500/day, reset at midnight Pacific).
"""

import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
API = os.environ.get("SIM_URL", "http://127.0.0.1:8800")
MODEL = "gemini-2.0-flash"

keys = pl.KeyPool.from_env(
    "GEMINI_KEY",
    env_file=HERE / ".env",
    auth="header:x-goog-api-key",
    limits=[
        f"{os.environ.get('DOC_RPM', '15')}/minute",
        f"{os.environ.get('DOC_RPD', '1500')}/day",
    ],
    day_resets="America/Los_Angeles",
)

job = pl.Job(
    "doc_migration",
    source=pl.JSONL(HERE / "documents.jsonl", id="doc_id"),
    sink=pl.SQLiteSink(HERE / "migrated.db", table="documents"),
    keys=keys,
    retries=6,
)


@job.task
async def migrate(item: pl.Item, ctx: pl.Context) -> dict[str, object]:
    prompt = f"Describe a diagram for this document: {item.data['title']}. {item.data['body']}"
    r = await ctx.http.post(
        f"{API}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": prompt}]}]},
        cost=pl.Cost(tokens=len(prompt) // 4 + 200),
    )
    r.raise_for_status()
    answer = r.json()
    return {
        "title": item.data["title"],
        "diagram": answer["candidates"][0]["content"]["parts"][0]["text"],
        "tokens": answer["usageMetadata"]["totalTokenCount"],
    }
