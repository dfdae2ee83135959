"""Create legacy.db: the old user table to migrate (run once before the example)."""

import random
import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(count: int = 500) -> None:
    rng = random.Random(5)
    path = HERE / "legacy.db"
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, name TEXT, password TEXT)")
    db.executemany(
        "INSERT INTO users VALUES (?, ?, ?, ?)",
        [
            (n, f"User{n}@Example.org", f"User {n}", f"pw-{rng.getrandbits(48):x}")
            for n in range(1, count + 1)
        ],
    )
    db.commit()
    db.close()
    print(f"{path}: {count} users")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
