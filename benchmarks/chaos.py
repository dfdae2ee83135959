"""Chaos: one job killed again and again while the provider and the database misbehave.

Each scenario runs one job (a JSONL source of N items, one OpenAI-style request per item
through ``ctx.http``, 2 keys on the simulated provider, ``Job(retries=5)`` and the default
backoff) with ``paceline run`` as a real process, and:

1. starts the simulated provider in its own process (``paceline sim``) with the faults
   asked for: ``5xx`` (a share of answers are 500/502/503), ``hangs`` (a share of answers
   wait ``--hang-seconds`` first), ``outage`` (every so often the provider refuses
   connections for ``--outage-seconds``, cutting the requests in flight:
   ``POST /_sim/outage``), ``dbdrop`` (every so often every connection to the job's
   PostgreSQL database, store and sink, is ended with ``pg_terminate_backend``);
2. starts ``paceline run`` and, after a random time, stops it with the scenario's signal
   (``kill``: SIGKILL; ``term``: SIGTERM, the graceful stop; ``int2``: two SIGINTs, the
   second one at once), again and again, ``--kills`` times;
3. runs the job once more to its end (faults still on: a clean run is one nobody kills;
   ``--calm-final`` ends outages and drops first);
4. checks exactly once: every item of the source is ``done`` or ``failed`` with its error,
   nothing pending or running; the sink holds one row per done item and no other row, each
   row the right answer for its item (a JSONL sink: every line whole); ``paceline verify``
   agrees. Items that failed for good are counted by cause (an outage's refused or cut
   connection, 5xx, a timeout, …).

One line per scenario, and a table at the end. Scenarios are every (sink, signal) pair
given; each has a fresh folder, simulator and, when it uses PostgreSQL, a fresh database.

    python benchmarks/chaos.py --sink sqlite --kills 100 --faults 5xx,hangs,outage
    python benchmarks/chaos.py --sink jsonl,postgres --kills 30 --faults 5xx,hangs,outage,dbdrop
    python benchmarks/chaos.py --sink sqlite --signal term --kills 20 --faults 5xx,hangs
    python benchmarks/chaos.py --sink postgres --store sqlite --kills 10 --faults dbdrop

``tests/e2e/test_chaos.py`` runs short scenarios of this module in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

FAULTS = ("5xx", "hangs", "outage", "dbdrop")
SINKS = ("sqlite", "jsonl", "postgres")
SIGNALS = ("kill", "term", "int2")
JOB_NAME = "work"
PG_ADMIN = os.environ.get("PACELINE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

JOB = """
from pathlib import Path

import paceline as pl

HERE = Path(__file__).parent
job = pl.Job(
    {name!r},
    source=pl.JSONL(HERE / "items.jsonl", id="id"),
    sink={sink},
    keys=pl.KeyPool({keys!r}, rpm={rpm}),
    retries={retries},
    backoff=pl.Backoff(base={backoff[0]!r}, cap={backoff[1]!r}),
    store={store!r},
)
URL = {url!r} + "/v1/chat/completions"


@job.task
async def work(item, ctx):
    body = {{"model": "m", "messages": [{{"role": "user", "content": "item " + item.id}}]}}
    r = await ctx.http.post(URL, json=body)
    r.raise_for_status()
    return {{"n": item.data["n"], "summary": r.json()["choices"][0]["message"]["content"]}}
"""

SINK_CODE = {
    "sqlite": 'pl.SQLiteSink(HERE / "out.db", table="results")',
    "jsonl": 'pl.JSONLSink(HERE / "out.jsonl")',
    "postgres": 'pl.PostgresSink({dsn!r}, table="results")',
}


@dataclass(frozen=True)
class Scenario:
    """One kill loop: where results go, how runs are stopped, what goes wrong meanwhile."""

    sink: str = "sqlite"
    store: str = "sqlite"  # or "postgres" (the sink's database when the sink is PostgreSQL)
    signal: str = "kill"
    faults: frozenset[str] = frozenset()
    kills: int = 10
    items: int = 0  # 0: enough for every kill to land while work remains
    seed: int = 1
    keys: int = 2
    rate: int = 1200  # requests per minute per key: the job's pace, 40/s with 2 keys
    latency: str = "uniform:0.02,0.2"
    error_rate: float = 0.05  # with "5xx"
    hang_rate: float = 0.01  # with "hangs"
    hang_seconds: float = 10.0
    outage_seconds: float = 5.0  # with "outage"
    outage_every: float = 20.0  # seconds between outages (0.5 to 1.5 times this)
    dbdrop_every: float = 3.0  # with "dbdrop": mean seconds between two drops
    life: tuple[float, float] = (0.5, 2.5)  # seconds a run lives before its signal
    retries: int = 5
    backoff: tuple[float, float] = (1.0, 120.0)  # pl.Backoff(base, cap): the default
    grace: float = 5.0  # --grace of every run (term, int2)
    faults_in_final: bool = True  # False: outages and drops end before the final run
    final_timeout: float = 900.0

    @property
    def n_items(self) -> int:
        # A run makes progress for about its life × the keys' pace (48 items a run were
        # measured at 40/s): 1.5 runs' worth per kill, so the kills land while work remains.
        return self.items or int(self.kills * self.rate * self.keys / 60 * 1.5) + 400

    @property
    def uses_postgres(self) -> bool:
        return "postgres" in (self.sink, self.store)

    def name(self) -> str:
        faults = "+".join(f for f in FAULTS if f in self.faults) or "none"
        return f"{self.sink} sink/{self.store} store, {self.signal} ×{self.kills}, {faults}"


@dataclass
class Report:
    scenario: Scenario
    items: int = 0
    signals: int = 0  # runs stopped by the scenario's signal
    finished_early: bool = False  # the job ended before every kill landed
    exits: Counter[str] = field(default_factory=Counter)  # signalled runs' exit codes
    stop_seconds: list[float] = field(default_factory=list)  # signal → exit (term, int2)
    anomalies: list[str] = field(default_factory=list)
    outages: int = 0
    dbdrops: int = 0  # connections ended
    final_exit: int | None = None
    final_runs: int = 0
    final_seconds: float = 0.0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # statuses in the store
    rows: int = 0
    duplicates: int = 0  # rows beyond the first for an id
    lost: int = 0  # done items without a row
    extra: int = 0  # rows of items that are not done (or not in the source)
    wrong: int = 0  # rows whose content is not the item's answer
    torn: int = 0  # JSONL lines that do not parse
    failed_silently: int = 0  # failed items without an error
    failed_by_cause: Counter[str] = field(default_factory=Counter)
    failed_examples: list[str] = field(default_factory=list)
    max_attempts: int = 0
    verify: str = ""

    @property
    def done(self) -> int:
        return self.counts.get("done", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def unfinished(self) -> int:
        return sum(n for s, n in self.counts.items() if s not in ("done", "failed"))

    @property
    def failed_by_outage(self) -> int:
        """Items failed for good on an outage's refused or cut connection: the job lived
        through the outage (it went on after it), so none of these should have failed."""
        return sum(n for c, n in self.failed_by_cause.items() if c.startswith("outage"))

    @property
    def exactly_once(self) -> bool:
        """Every item done or failed with its error, one right row per done item."""
        return (
            self.done + self.failed == self.items == sum(self.counts.values())
            and self.unfinished == 0
            and self.rows == self.done
            and not (self.duplicates or self.lost or self.extra or self.wrong or self.torn)
            and self.failed_silently == 0
        )

    def line(self) -> str:
        s = self.scenario
        causes = ", ".join(f"{c} {n}" for c, n in self.failed_by_cause.most_common()) or "-"
        early = " (job ended early)" if self.finished_early else ""
        stops = ""
        if self.stop_seconds:
            median = statistics.median(self.stop_seconds)
            stops = f", stop took {median:.1f} s (median), ≤ {max(self.stop_seconds):.1f} s"
        return (
            f"{s.name()}: {'OK' if self.exactly_once else 'BROKEN'} — "
            f"{self.signals}/{s.kills} signals landed{early}"
            f"{stops}; exits {dict(self.exits)}; items {self.items}: done {self.done}, "
            f"failed {self.failed} ({causes}), unfinished {self.unfinished}; rows {self.rows}: "
            f"duplicates {self.duplicates}, lost {self.lost}, extra {self.extra}, "
            f"wrong {self.wrong}, torn {self.torn}; verify {self.verify}; "
            f"outages {self.outages}, db connections dropped {self.dbdrops}; final run exit "
            f"{self.final_exit} after {self.final_seconds:.0f} s ({self.final_runs} run(s)); "
            f"{self.seconds:.0f} s in all; anomalies {len(self.anomalies)}"
        )


# -- the pieces ------------------------------------------------------------------------------


def secrets_for(n: int) -> list[str]:
    return [f"chaos-secret-{i:04d}-k{i:03d}" for i in range(n)]


@contextlib.contextmanager
def simulator(s: Scenario, keys: list[str], log: Path) -> Iterator[str]:
    """``paceline sim`` in its own process, with the scenario's faults."""
    cmd = [
        sys.executable, "-m", "paceline", "sim", "--port", "0", "--keys", ",".join(keys),
        "--rpm", str(s.rate), "--latency", s.latency, "--seed", str(s.seed),
    ]  # fmt: skip
    if "5xx" in s.faults:
        cmd += ["--error-rate", str(s.error_rate)]
    if "hangs" in s.faults:
        cmd += ["--hang-rate", str(s.hang_rate), "--hang-seconds", str(s.hang_seconds)]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "serving on" not in line:
                raise RuntimeError(f"paceline sim did not start: {line!r}")
            yield line.split("serving on", 1)[1].split()[0]
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@contextlib.contextmanager
def fresh_database(keep: bool = False) -> Iterator[str]:
    import psycopg

    name = f"paceline_chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        if not keep:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Faults:
    """Outages of the provider and dropped database connections at random moments, on
    threads of their own, from ``start()`` to ``stop()``."""

    def __init__(self, s: Scenario, sim_url: str, dsn: str | None) -> None:
        self.s, self.sim_url, self.dsn = s, sim_url, dsn
        self.rng = random.Random(s.seed * 7919)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.outages = 0
        self.dbdrops = 0
        self.errors: list[str] = []

    def start(self) -> None:
        if "outage" in self.s.faults:
            self.threads.append(threading.Thread(target=self._outages, daemon=True))
        if "dbdrop" in self.s.faults and self.dsn is not None:
            self.threads.append(threading.Thread(target=self._dbdrops, daemon=True))
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """Stop injecting (again: harmless); returns once the provider answers."""
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        # An outage under way ends by itself: wait for the provider to answer again.
        deadline = time.monotonic() + self.s.outage_seconds + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.sim_url}/_sim/stats", timeout=2)
                return
            time.sleep(0.1)

    def _outages(self) -> None:
        s = self.s
        while not self.stopping.wait(self.rng.uniform(0.5, 1.5) * s.outage_every):
            try:
                r = httpx.post(
                    f"{self.sim_url}/_sim/outage",
                    params={"seconds": s.outage_seconds},
                    timeout=5,
                    headers={"connection": "close"},
                )
                r.raise_for_status()
                self.outages += 1
            except httpx.HTTPError as exc:  # down already: the next one comes later
                self.errors.append(f"outage request: {exc!r}")
            self.stopping.wait(s.outage_seconds)

    def _dbdrops(self) -> None:
        import psycopg

        assert self.dsn is not None
        name = self.dsn.rsplit("/", 1)[1]
        mean = self.s.dbdrop_every
        while not self.stopping.wait(self.rng.uniform(0.2 * mean, 1.8 * mean)):
            try:
                with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
                    rows = admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    ).fetchall()
                self.dbdrops += sum(1 for (ok,) in rows if ok)
            except psycopg.Error as exc:
                self.errors.append(f"dbdrop: {exc!r}")


def write_job(folder: Path, s: Scenario, sim_url: str, dsn: str | None) -> Path:
    with (folder / "items.jsonl").open("w") as f:
        for n in range(s.n_items):
            f.write(json.dumps({"id": f"it-{n:06d}", "n": n}) + "\n")
    sink = SINK_CODE[s.sink].format(dsn=dsn)
    store = dsn if s.store == "postgres" else None
    job = folder / "job.py"
    job.write_text(
        JOB.format(
            name=JOB_NAME,
            sink=sink,
            keys=secrets_for(s.keys),
            rpm=s.rate,
            retries=s.retries,
            backoff=s.backoff,
            store=store,
            url=sim_url,
        )
    )
    return job


def start_run(job: Path, s: Scenario, tag: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "paceline", "run", str(job), "--progress", "none"]
    cmd += ["--grace", str(s.grace)]
    env = {k: v for k, v in os.environ.items() if k not in ("PACELINE_STORE", "PACELINE_LIMITER")}
    logs = job.parent / "logs"
    with (logs / f"{tag}.out").open("wb") as out, (logs / f"{tag}.err").open("wb") as err:
        return subprocess.Popen(
            cmd, cwd=job.parent, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )


def log_tail(job: Path, tag: str, chars: int = 400) -> str:
    text = (job.parent / "logs" / f"{tag}.err").read_text(errors="replace").strip()
    return text[-chars:].replace("\n", " | ")


def stop_run(proc: subprocess.Popen[bytes], s: Scenario, rng: random.Random) -> float | None:
    """Send the scenario's signal; the seconds until the process exited (``None``: it did
    not, and was killed)."""
    sent = time.monotonic()
    if s.signal == "kill":
        proc.kill()
        proc.wait()
        return 0.0
    if s.signal == "term":
        proc.send_signal(signal.SIGTERM)
        limit = s.grace + 30
    else:
        proc.send_signal(signal.SIGINT)
        time.sleep(rng.uniform(0.05, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        limit = 10.0
    try:
        proc.wait(limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
    return time.monotonic() - sent


def kill_loop(job: Path, s: Scenario, r: Report) -> None:
    rng = random.Random(s.seed)
    for i in range(s.kills):
        tag = f"run-{i:03d}"
        proc = start_run(job, s, tag)
        life = rng.uniform(*s.life)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(life)
        if proc.returncode is not None:  # ended by itself before its signal
            if proc.returncode in (0, 1):
                r.finished_early = True
                r.exits[f"{proc.returncode} (ended)"] += 1
                return
            r.anomalies.append(
                f"{tag} ended by itself with exit {proc.returncode}: {log_tail(job, tag)}"
            )
            r.exits[f"{proc.returncode} (ended)"] += 1
            continue
        took = stop_run(proc, s, rng)
        r.signals += 1
        r.exits[str(proc.returncode)] += 1
        if took is None:
            r.anomalies.append(f"{tag}: did not stop within its limit after {s.signal}; killed")
        elif s.signal != "kill":
            r.stop_seconds.append(took)
        expected = {"kill": (-signal.SIGKILL,), "term": (130, 0, 1), "int2": (130, 0, 1)}
        if took is not None and proc.returncode not in expected[s.signal]:
            r.anomalies.append(
                f"{tag}: exit {proc.returncode} after {s.signal}: {log_tail(job, tag)}"
            )
        if s.signal != "kill" and "Traceback" in log_tail(job, tag, 100_000):
            r.anomalies.append(f"{tag}: a traceback on stderr: {log_tail(job, tag)}")
        if proc.returncode in (0, 1):
            r.finished_early = True
            return


def final_run(job: Path, s: Scenario, r: Report) -> None:
    started = time.monotonic()
    for attempt in range(3):
        tag = f"final-{attempt}"
        proc = start_run(job, s, tag)
        try:
            proc.wait(max(1.0, s.final_timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(s.grace + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            r.anomalies.append(f"{tag}: the final run did not end within {s.final_timeout:.0f} s")
        r.final_runs += 1
        r.final_exit = proc.returncode
        if proc.returncode in (0, 1):
            break
        r.anomalies.append(f"{tag}: final run exit {proc.returncode}: {log_tail(job, tag)}")
        if time.monotonic() - started > s.final_timeout:
            break
    r.final_seconds = time.monotonic() - started


# -- checking --------------------------------------------------------------------------------


def cause(error: str | None) -> str:
    """What made an item fail for good, from its last error."""
    text = error or ""
    if re.search(r"ConnectError|[Cc]onnection refused|connection attempts failed", text):
        return "outage: connection refused"
    if re.search(r"RemoteProtocolError|[Ss]erver disconnected|ReadError|reset by peer", text):
        return "outage: connection cut"
    if re.search(r"Timeout", text):
        return "timeout"
    if re.search(r"HTTP 5\d\d", text):
        return "5xx"
    if "HTTP 429" in text:
        return "429"
    return "other"


def store_items(folder: Path, s: Scenario, dsn: str | None) -> list[tuple[str, str, int, str]]:
    """(id, status, attempts, last error) of every item in the store."""
    query = "SELECT id, status, attempts, last_error FROM {t}items"
    if s.store == "postgres":
        import psycopg

        assert dsn is not None
        with psycopg.connect(dsn) as conn:
            return list(conn.execute(query.format(t=f'"paceline_{JOB_NAME}".')).fetchall())
    db = sqlite3.connect(folder / ".paceline" / f"{JOB_NAME}.db")
    try:
        return list(db.execute(query.format(t="")).fetchall())
    finally:
        db.close()


def sink_rows(folder: Path, s: Scenario, dsn: str | None, r: Report) -> list[dict[str, Any]]:
    if s.sink == "jsonl":
        path = folder / "out.jsonl"
        rows = []
        text = path.read_text() if path.exists() else ""
        if text and not text.endswith("\n"):
            r.torn += 1
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                r.torn += 1
        return rows
    query = "SELECT id, n, summary FROM results"
    if s.sink == "postgres":
        import psycopg

        assert dsn is not None
        with psycopg.connect(dsn) as conn:
            found = conn.execute(query).fetchall()
    else:
        db = sqlite3.connect(folder / "out.db")
        try:
            found = db.execute(query).fetchall()
        finally:
            db.close()
    return [{"id": i, "n": n, "summary": summary} for i, n, summary in found]


def check(job: Path, s: Scenario, dsn: str | None, r: Report) -> None:
    folder = job.parent
    items = store_items(folder, s, dsn)
    r.items = s.n_items
    r.counts = dict(Counter(status for _, status, _, _ in items))
    expected_ids = {f"it-{n:06d}" for n in range(s.n_items)}
    status_of = {i: status for i, status, _, _ in items}
    r.extra += len(set(status_of) - expected_ids)
    for i, status, attempts, error in items:
        r.max_attempts = max(r.max_attempts, attempts or 0)
        if status == "failed":
            if not error:
                r.failed_silently += 1
            r.failed_by_cause[cause(error)] += 1
            if len(r.failed_examples) < 5:
                r.failed_examples.append(f"{i} after {attempts} attempts: {(error or '')[:160]}")
    rows = sink_rows(folder, s, dsn, r)
    r.rows = len(rows)
    seen: Counter[str] = Counter(str(row.get("id")) for row in rows)
    r.duplicates = sum(n - 1 for n in seen.values())
    done = {i for i, status in status_of.items() if status == "done"}
    r.lost = len(done - set(seen))
    r.extra += len(set(seen) - done)
    for row in rows:
        i = str(row.get("id"))
        if i in expected_ids:
            n = int(i[3:])
            if row.get("n") != n or row.get("summary") != f"Summary: item {i}":
                r.wrong += 1
    verify = subprocess.run(
        [sys.executable, "-m", "paceline", "verify", str(job)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    r.verify = "ok" if verify.returncode == 0 else f"exit {verify.returncode}"
    if verify.returncode != 0:
        r.anomalies.append(f"verify: {(verify.stdout + verify.stderr).strip()[-600:]}")


# -- a scenario --------------------------------------------------------------------------


def run_scenario(s: Scenario, *, keep: bool = False, workdir: Path | None = None) -> Report:
    """Run one scenario from scratch and check it; ``keep`` leaves its folder and
    database for a post-mortem (their place is printed)."""
    if s.sink not in SINKS or s.signal not in SIGNALS or s.store not in ("sqlite", "postgres"):
        raise ValueError(f"bad scenario: {s}")
    if unknown := set(s.faults) - set(FAULTS):
        raise ValueError(f"unknown faults: {sorted(unknown)}")
    r = Report(s)
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="paceline-chaos-", dir=workdir))
    (folder / "logs").mkdir()
    keys = secrets_for(s.keys)
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(fresh_database(keep)) if s.uses_postgres else None
        url = stack.enter_context(simulator(s, keys, folder / "logs" / "sim.err"))
        job = write_job(folder, s, url, dsn)
        faults = Faults(s, url, dsn)
        faults.start()
        try:
            kill_loop(job, s, r)
            if not s.faults_in_final:
                faults.stop()
            final_run(job, s, r)
        finally:
            faults.stop()
        r.outages, r.dbdrops = faults.outages, faults.dbdrops
        r.anomalies += faults.errors
        check(job, s, dsn, r)
        if keep:
            print(f"  kept: {folder}" + (f" and {dsn}" if dsn else ""), flush=True)
    if not keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    r.seconds = time.monotonic() - started
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sink", default="sqlite", help="comma-separated: sqlite, jsonl, postgres")
    parser.add_argument(
        "--store",
        default="auto",
        choices=["auto", "sqlite", "postgres"],
        help="auto: PostgreSQL for a PostgreSQL sink (rows and done marks in one transaction)",
    )
    parser.add_argument("--signal", default="kill", help="comma-separated: kill, term, int2")
    parser.add_argument(
        "--faults",
        default="5xx,hangs,outage",
        help=f"comma-separated of {', '.join(FAULTS)}, or none",
    )
    parser.add_argument("--kills", type=int, default=20, help="signals per scenario")
    parser.add_argument("--items", type=int, default=0, help="items (0: from --kills)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=int, default=1200, help="requests/minute per key (2 keys)")
    parser.add_argument("--error-rate", type=float, default=0.05)
    parser.add_argument("--hang-rate", type=float, default=0.01)
    parser.add_argument("--hang-seconds", type=float, default=10.0)
    parser.add_argument("--outage-seconds", type=float, default=5.0)
    parser.add_argument(
        "--outage-every", type=float, default=20.0, help="mean seconds between outages"
    )
    parser.add_argument(
        "--dbdrop-every", type=float, default=3.0, help="mean seconds between drops"
    )
    parser.add_argument("--retries", type=int, default=5, help="Job(retries=)")
    parser.add_argument("--grace", type=float, default=5.0, help="--grace of each run")
    parser.add_argument(
        "--calm-final", action="store_true", help="no outages or drops during the final run"
    )
    parser.add_argument("--keep", action="store_true", help="keep folders and databases")
    parser.add_argument("--json", type=Path, help="write every report here")
    args = parser.parse_args()
    sinks = [x.strip() for x in args.sink.split(",") if x.strip()]
    signals = [x.strip() for x in args.signal.split(",") if x.strip()]
    faults = frozenset(x.strip() for x in args.faults.split(",") if x.strip() and x != "none")
    for name, given, known in (
        ("sink", sinks, SINKS),
        ("signal", signals, SIGNALS),
        ("fault", faults, FAULTS),
    ):
        if bad := [x for x in given if x not in known]:
            parser.error(f"unknown {name} {bad[0]!r} (known: {', '.join(known)})")
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
        f"command: {' '.join(sys.argv)}",
        flush=True,
    )
    reports = []
    for sink, sig in itertools.product(sinks, signals):
        store = (
            args.store if args.store != "auto" else ("postgres" if sink == "postgres" else "sqlite")
        )
        scenario = Scenario(
            sink=sink, store=store, signal=sig, faults=faults, kills=args.kills,
            items=args.items, seed=args.seed, rate=args.rate, error_rate=args.error_rate,
            hang_rate=args.hang_rate, hang_seconds=args.hang_seconds,
            outage_seconds=args.outage_seconds, outage_every=args.outage_every,
            dbdrop_every=args.dbdrop_every, retries=args.retries, grace=args.grace,
            faults_in_final=not args.calm_final,
        )  # fmt: skip
        if "dbdrop" in faults and not scenario.uses_postgres:
            scenario = replace(scenario, faults=faults - {"dbdrop"})
        r = run_scenario(scenario, keep=args.keep)
        reports.append(r)
        print(r.line(), flush=True)
        for example in r.failed_examples:
            print(f"    failed: {example}")
        for anomaly in r.anomalies[:10]:
            print(f"    anomaly: {anomaly}")
    print()
    print(
        "| sink / store | signal | faults | signals landed | items | done | failed for good "
        "(cause) | duplicates | lost | extra / wrong rows | exactly once | final run |"
    )
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|")
    for r in reports:
        s = r.scenario
        causes = ", ".join(f"{c}: {n}" for c, n in r.failed_by_cause.most_common())
        faults_text = "+".join(f for f in FAULTS if f in s.faults) or "none"
        print(
            f"| {s.sink} / {s.store} | {s.signal} | {faults_text} | {r.signals}/{s.kills} | "
            f"{r.items} | {r.done} | {r.failed}{f' ({causes})' if causes else ''} | "
            f"{r.duplicates} | {r.lost} | {r.extra} / {r.wrong} | "
            f"{'yes' if r.exactly_once else 'NO'} | {r.final_seconds:.0f} s |"
        )
    if args.json:
        rows = [
            {**asdict(r), "exits": dict(r.exits), "failed_by_cause": dict(r.failed_by_cause),
             "scenario": {**asdict(r.scenario), "faults": sorted(r.scenario.faults)},
             "exactly_once": r.exactly_once}
            for r in reports
        ]  # fmt: skip
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    sys.exit(0 if all(r.exactly_once for r in reports) else 1)


if __name__ == "__main__":
    main()
