"""CPU-heavy steps: bcrypt password hashing inline (on the event loop) vs ``ctx.run_cpu``.

Same job, same items, side by side in one run; each measurement in a fresh subprocess.

    python benchmarks/cpu_pool.py --items 200 --rounds 10 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bcrypt

import paceline as pl


def hash_password(password: str, rounds: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def run(mode: str, items: int, rounds: int, work: Path) -> float:
    job = pl.Job(
        "cpu",
        source=[{"id": str(n), "pw": f"secret-{n}"} for n in range(items)],
        sink=pl.JSONLSink(work / "out.jsonl"),
        concurrency=16,
    )

    @job.task
    async def migrate(item: pl.Item, ctx: pl.Context) -> dict[str, str]:
        if mode == "inline":
            digest = hash_password(item.data["pw"], rounds)  # blocks the event loop
        else:
            digest = await ctx.run_cpu(hash_password, item.data["pw"], rounds)
        return {"hash": digest}

    start = time.perf_counter()
    result = job.run(store=work / "store.db")
    assert result.snapshot.done == items
    return items / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "WORK"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child[0], args.items, args.rounds, Path(args.child[1]))))
        return
    print(f"machine: {os.cpu_count()} cores; bcrypt rounds {args.rounds}; {args.items} items")
    rates: dict[str, float] = {}
    for mode in ("inline", "run_cpu"):
        runs = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as work:
                cmd = [
                    sys.executable,
                    __file__,
                    "--items",
                    str(args.items),
                    "--rounds",
                    str(args.rounds),
                    "--child",
                    mode,
                    work,
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
        rates[mode] = statistics.median(runs)
        shown = ", ".join(f"{r:.1f}" for r in runs)
        print(f"  {mode:<8} {rates[mode]:7.1f} items/s  (runs: {shown})")
    print(f"  speed-up run_cpu / inline = {rates['run_cpu'] / rates['inline']:.2f}x")


if __name__ == "__main__":
    main()
