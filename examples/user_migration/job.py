"""Migrate user rows from SQLite into PostgreSQL, hashing passwords with bcrypt.

Hashing is CPU-heavy: `ctx.run_cpu` sends it to a process pool (one process per core),
so the event loop keeps the writes flowing. Writes to PostgreSQL are batched, the batch
size adapting to how long a write takes. The plaintext passwords stay out of paceline's
store (`secret_fields`). Check first with `--dry-run`, check after with `paceline verify`.
"""

import os
from pathlib import Path

import bcrypt

import paceline as pl

HERE = Path(__file__).parent
DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ROUNDS = int(os.environ.get("BCRYPT_ROUNDS", "10"))


def hash_password(plain: str, rounds: int) -> str:
    """Runs in a worker process: a module-level function, importable by name."""
    return bcrypt.hashpw(plain.encode(), bcrypt.gensalt(rounds)).decode()


job = pl.Job(
    "user_migration",
    source=pl.SQL(HERE / "legacy.db", "SELECT id, email, name, password FROM users ORDER BY id"),
    sink=pl.PostgresSink(DSN, table="users"),
    batch=pl.Batch(min=10, max=1000, target=2.0),
    # Plaintext passwords never reach paceline's store (nor an error message): the task
    # gets them from the source again when it runs.
    secret_fields=["password"],
)


@job.task
async def migrate(user: pl.Item, ctx: pl.Context) -> dict[str, object]:
    if "@" not in (user.data["email"] or ""):
        raise pl.Permanent(f"invalid email {user.data['email']!r}")
    return {
        "email": user.data["email"].lower(),
        "name": user.data["name"],
        "password_hash": await ctx.run_cpu(hash_password, user.data["password"], ROUNDS),
    }
