"""Ingest repositories with a pool of GitHub-style tokens into PostgreSQL.

Three requests per repository (the repository, its languages, its latest commits), each
through the token pool: hourly limits per token, primary-limit answers (403/429 with
remaining 0) park a token until its reset, secondary limits cool it. Rows are upserted by
repository, so a rerun (or a crash and a rerun) writes nothing twice.
"""

import os
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
API = os.environ.get("SIM_URL", "http://127.0.0.1:8800")
DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

tokens = pl.KeyPool.from_env(
    "GITHUB_TOKEN",
    env_file=HERE / ".env",
    auth="token",
    limits=[f"{os.environ.get('REPO_RPH', '5000')}/hour"],
)

job = pl.Job(
    "repo_ingestion",
    source=pl.CSV(HERE / "repositories.csv", id="full_name"),
    sink=pl.PostgresSink(DSN, table="repositories"),
    keys=tokens,
    retries=5,
)


@job.task
async def ingest(item: pl.Item, ctx: pl.Context) -> dict[str, object]:
    base = f"{API}/repos/{item.id}"
    repo = await ctx.http.get(base)
    repo.raise_for_status()
    languages = await ctx.http.get(f"{base}/languages")
    languages.raise_for_status()
    commits = await ctx.http.get(f"{base}/commits", params={"per_page": 5})
    commits.raise_for_status()
    data = repo.json()
    return {
        "stars": data.get("stargazers_count"),
        "default_branch": data.get("default_branch"),
        "languages": languages.json(),
        "latest_commits": [c.get("sha") for c in commits.json()],
    }
