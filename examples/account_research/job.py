"""Research accounts from a CSV: several LLM calls per account, token limits, cost.

Two calls per account (a profile, then a category from it), OpenAI-style keys with
request and token limits; the answers' usage is priced per model, so the summary,
dashboard and `paceline status --json` show the cost, and `--budget USD` stops the run
cleanly when it is spent. Results go to SQLite, written by one process per job.
"""

import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
API = os.environ.get("SIM_URL", "http://127.0.0.1:8800")
MODEL = "gpt-4o-mini"
CATEGORIES = ["enterprise", "mid-market", "startup", "public sector"]

job = pl.Job(
    "account_research",
    source=pl.CSV(HERE / "accounts.csv", id="account_id"),
    sink=pl.SQLiteSink(HERE / "research.db", table="accounts"),
    keys=pl.KeyPool.from_env("OPENAI_KEY", env_file=HERE / ".env", rpm=500, tpm=200_000),
    prices={MODEL: pl.Price(input=0.15, output=0.60)},  # USD per million tokens
    retries=6,
)


async def ask(ctx: pl.Context, prompt: str, max_tokens: int) -> str:
    r = await ctx.http.post(
        f"{API}/v1/chat/completions",
        json={
            "model": MODEL,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        },
        cost=pl.Cost(tokens=len(prompt) // 4 + max_tokens),
    )
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"])


@job.task
async def research(account: pl.Item, ctx: pl.Context) -> dict[str, object]:
    name, domain = account.data["name"], account.data["domain"]
    profile = await ask(ctx, f"Profile the company {name} ({domain}) in 3 sentences.", 150)
    answer = await ask(ctx, f"Which of {', '.join(CATEGORIES)} fits: {profile}", 10)
    category = next(
        (c for c in CATEGORIES if c in answer.lower()), CATEGORIES[len(name) % len(CATEGORIES)]
    )
    return {"name": name, "domain": domain, "profile": profile, "category": category}
