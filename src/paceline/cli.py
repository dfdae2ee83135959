"""The ``paceline`` command: thin subcommands over the public API.

Every error is one readable line on stderr and exit code 2; a traceback only with
``PACELINE_DEBUG=1``. Exit codes: 0 all done, 1 some items failed for good, 2 bad usage or
configuration, 130 interrupted.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click

from . import __version__, ops
from ._jobfile import load_job
from ._redact import redact
from .errors import PacelineError
from .report import (
    LiveReporter,
    LogReporter,
    Reporter,
    circuit_text,
    format_duration,
    key_line,
    summary_text,
)
from .status import dry_run, job_status
from .store import is_invalid_id, is_postgres

__all__ = ["cli", "main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_store_option = click.option(
    "--store",
    type=str,
    envvar="PACELINE_STORE",
    show_envvar=True,
    help="Where the job's state is: a SQLite file (default: .paceline/<job>.db beside the "
    "job file) or a postgresql:// DSN, shared by workers on many machines.",
)
_jobfile = click.argument("jobfile", type=click.Path(path_type=Path))


def _check_notify(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from .web.notify import check_url

    try:
        return check_url(value)
    except PacelineError as exc:
        raise click.BadParameter(str(exc)) from None


_notify_option = click.option(
    "--notify",
    metavar="URL",
    envvar="PACELINE_NOTIFY",
    show_envvar=True,
    callback=_check_notify,
    help="POST a JSON summary (counts, time, cost, how it ended; no keys) to URL when a run ends.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="paceline")
def cli() -> None:
    """Run large batch jobs through rate-limited APIs: resumable, exactly once, at the
    quota's limit."""


@cli.command()
@_jobfile
@_store_option
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    envvar="PACELINE_CONCURRENCY",
    show_envvar=True,
    help="Items in flight at once (default: automatic with keys, else 16).",
)
@click.option(
    "--limiter",
    default=None,
    envvar="PACELINE_LIMITER",
    show_envvar=True,
    metavar="URL",
    help="Where the keys' meters live: in this process (default) or redis://… to share "
    "every key's quota exactly between workers on any number of machines.",
)
@click.option("--sequential", is_flag=True, help="One item at a time, in order.")
@click.option(
    "--until-quota",
    is_flag=True,
    help="Stop (exit 0) when every key is out of quota, instead of waiting.",
)
@click.option("--max-items", type=click.IntRange(min=0), help="Stop after taking N items.")
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    default=None,
    metavar="USD",
    help="Stop cleanly once the job has cost this much (needs Job(prices=...)).",
)
@click.option(
    "--per-day",
    type=click.IntRange(min=0),
    envvar="PACELINE_PER_DAY",
    show_envvar=True,
    help="Daily item budget: stop once N items were done today.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read and check the whole source; report what a run would do; call nothing.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight items get to finish after the first Ctrl+C.",
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "live", "log", "none"]),
    default="auto",
    show_default=True,
    help="Live dashboard, plain log lines, or nothing.",
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Plain log mode: a line every N items...",
)
@click.option(
    "--log-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="...or every T seconds.",
)
@click.option(
    "--input",
    "input_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="For a job whose source is paceline.Upload: add FILE to its uploads and run "
    "(a file given before is not added twice).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve this run's Prometheus metrics on 127.0.0.1:PORT/metrics (paceline[web]).",
)
@_notify_option
def run(
    jobfile: Path,
    store: str | None,
    limiter: str | None,
    concurrency: int | None,
    sequential: bool,
    until_quota: bool,
    max_items: int | None,
    per_day: int | None,
    budget: float | None,
    dry_run: bool,
    grace: float,
    progress: str,
    log_every: int,
    log_interval: float,
    input_file: Path | None,
    metrics_port: int | None,
    notify: str | None,
) -> int:
    """Run (or continue) the job defined in JOBFILE."""
    job = load_job(jobfile)
    if dry_run:
        with _dry_input(job, input_file):
            report = dry_run_report(job, store)
        click.echo(report)
        return 0
    _take_input(job, input_file)
    if progress == "auto":
        progress = "live" if sys.stderr.isatty() else "log"
    reporter: Reporter | None
    if progress == "live":
        reporter = LiveReporter()
    elif progress == "log":
        reporter = LogReporter(every_items=log_every, every_seconds=log_interval)
    else:
        reporter = None
    printed = reporter is not None
    if metrics_port is not None:
        reporter = _with_metrics(reporter, metrics_port)
    try:
        result = job.run(
            store=store,
            concurrency=concurrency,
            sequential=sequential,
            max_items=max_items,
            grace=grace,
            until_quota=until_quota,
            per_day=per_day,
            budget=budget,
            limiter=limiter,
            reporter=reporter,
            install_signal_handlers=True,
        )
    except Exception as exc:
        if notify:
            _notify_failure(notify, job.name, jobfile, exc)
        raise
    if not printed:
        click.echo(summary_text(result))
    if notify:
        from .web.notify import notify as post
        from .web.notify import run_summary

        post(notify, run_summary(job.name, result, str(jobfile)))
    if result.error is not None:
        _error(result.error)
    if result.interrupted:
        # A task thread still blocked in user code must not hold the exit (interpreter
        # shutdown joins pool threads); everything durable is already committed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.exit_code)
    return result.exit_code


def _dry_input(job: Any, input_file: Path | None) -> Any:
    """A dry run with ``--input`` reads the file as if added, and adds nothing."""
    import contextlib

    from .upload import Upload

    if input_file is None:
        return contextlib.nullcontext()
    if not isinstance(job.source, Upload):
        _take_input(job, input_file)  # refuses it, with the reason
    return job.source.including(input_file)


def _take_input(job: Any, input_file: Path | None) -> None:
    from .upload import prepare_input

    line = prepare_input(job, input_file)
    if line:
        click.echo(line, err=True)


def _with_metrics(reporter: Reporter | None, port: int) -> Reporter:
    from .web import HINT, missing

    if missing(("prometheus_client",)):
        raise click.UsageError(f"--metrics-port needs prometheus-client: {HINT}")
    from .report import QuietReporter
    from .web.metrics import MetricsReporter

    metrics = MetricsReporter(reporter or QuietReporter(), port)
    click.echo(f"paceline: metrics on http://127.0.0.1:{metrics.port}/metrics", err=True)
    return metrics


def _notify_failure(url: str, job: str, jobfile: Path, exc: Exception) -> None:
    from .web.notify import notify as post

    # A paceline error says what went wrong without a secret; others are named by type.
    error = str(exc) if isinstance(exc, PacelineError) else type(exc).__name__
    code = EXIT_USAGE if isinstance(exc, PacelineError) else 1
    post(url, {"event": "run failed", "job": job, "jobfile": str(jobfile),
               "exit_code": code, "error": error, "finished_at": time.time()})  # fmt: skip


def _worker(**options: Any) -> int:
    """``paceline worker``: ``run``, on a store many workers share."""
    job = load_job(options["jobfile"])
    if not is_postgres(job.store_target(options["store"])):
        raise click.UsageError(
            "a worker joins a job whose store is shared: give it a PostgreSQL store "
            "(--store postgresql://…, PACELINE_STORE or Job(store=...)); a SQLite store "
            "holds one run at a time (use `paceline run`)"
        )
    code: int = run.callback(**options)  # type: ignore[misc]
    return code


cli.add_command(
    click.Command(
        "worker",
        params=list(run.params),
        callback=_worker,
        help="Join the job as one more worker: `run` on a PostgreSQL store (shared by "
        "workers on any number of machines; with --limiter redis://… they share the keys' "
        "quotas too).",
    )
)


def dry_run_report(job: Any, store: str | None) -> str:
    r = dry_run(job, store)
    lines = [
        f"dry run of job {job.name!r}: {r.records:,} records in {job.source.describe()}",
        f"  would run:      {r.new + r.waiting:,} ({r.new:,} new, {r.waiting:,} left from"
        " earlier runs)",
        f"  already done:   {r.done:,}",
        f"  failed before:  {r.failed:,} (`paceline retry` puts them back)",
        f"  invalid:        {r.invalid:,}",
        f"  duplicate ids:  {r.duplicates:,}",
    ]
    lines += [f"    {example}" for example in r.examples]
    lines.append("nothing was called and nothing was written")
    return "\n".join(lines)


@cli.command()
@_jobfile
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(jobfile: Path, store: str | None, as_json: bool) -> int:
    """Show how far the job is; works while it runs, from another process."""
    job = load_job(jobfile)
    data = job_status(job, store)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return 0
    click.echo(f"job {data['job']!r}: {data['state']}  (store {data['store']})")
    total = data["total"] or 1
    finished = data["done"] + data["failed"] + data["skipped"]
    click.echo(
        f"  {finished:,}/{data['total']:,} "
        f"({100.0 * finished / total:.1f}%)  done {data['done']:,}"
        f" · failed {data['failed']:,} · pending {data['pending']:,}"
        f" (retrying {data['retrying']:,}) · in flight {data['running']:,}"
    )
    run = data["run"] or {}
    if data["state"] == "running":
        eta = run.get("eta_seconds")
        click.echo(
            f"  pid {run.get('pid')} on {run.get('host')} · {run.get('rate_now', 0)}/s now"
            f" · ETA {'--' if eta is None else f'{eta:.0f}s'}"
        )
    workers = data.get("workers") or []
    if len(workers) > 1:
        click.echo(f"  {len(workers)} workers:")
        for w in workers:
            started = time.strftime("%H:%M:%S", time.localtime(w["started_at"]))
            beat = max(0.0, time.time() - w["heartbeat"])
            click.echo(
                f"    pid {w['pid']} on {w['host']}: since {started}, heartbeat {beat:.0f}s ago,"
                f" {w['done']:,} done, {w['rate_now']}/s now"
            )
    if data.get("circuit"):
        click.echo(f"  paused: {circuit_text(data['circuit'])}")
    if data["duplicates"]:
        click.echo(f"  duplicate ids in the source: {data['duplicates']:,}")
    for key in data["keys"]:
        click.echo(f"  key {key_line(key)}")
    if data["recent_failures"]:
        click.echo("  recent failures:")
        for f in data["recent_failures"]:
            click.echo(f"    {f['id']} (attempts {f['attempts']}): {f['error'][:200]}")
    return 0


@cli.command()
@_jobfile
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
def keys(jobfile: Path, store: str | None, as_json: bool) -> int:
    """One line per key (masked): limits, use, today's quota, 429s, state."""
    job = load_job(jobfile)
    if job.keys is None:
        raise click.UsageError(f"job {job.name!r} has no keys (Job(keys=KeyPool(...)))")
    data = job_status(job, store)["keys"]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return 0
    for key in data:
        limits = ", ".join(key.get("limits") or []) or "no limits configured"
        click.echo(f"{key_line(key)}  [{limits}]")
    return 0


@cli.command()
@_jobfile
@_store_option
@click.option(
    "--requests-per-item",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Requests one item takes (default: measured from done items, else 1).",
)
def plan(jobfile: Path, store: str | None, requests_per_item: float | None) -> int:
    """How long and how much: the pool's capacity, what is pending, when it will finish."""
    import math

    from .limits import next_day_start, parse_limit, zone
    from .plan import capacity_of, make_plan

    job = load_job(jobfile)
    status = job_status(job, store)
    pending = status["pending"] + status["running"]
    if not status.get("source_done"):
        pending = dry_run(job, store).new + status["pending"] + status["running"]
    now = time.time()
    if job.keys is None:
        # No keys: the engine and the task are the bound; the last run measured them.
        rate = (status["run"] or {}).get("rate_avg") or 0.0
        click.echo(f"plan for job {job.name!r}: no keys, so no quota: the task is the bound")
        click.echo(f"  pending:            {pending:,} items")
        if not rate:
            click.echo(
                "  finish:             no rate measured yet: run a little "
                f"(`paceline run {jobfile} --max-items 1000`) and ask again"
            )
        else:
            seconds = pending / rate
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(now + seconds))
            click.echo(f"  last run's rate:    {rate:,.1f} items/s")
            click.echo(f"  finish:             in about {format_duration(seconds)} ({when})")
        return 0
    used = sum(k["requests"] for k in status["keys"])
    finished = status["done"] + status["failed"]
    rpi = requests_per_item or (used / finished if finished and used else 1.0)
    # The limits in force: as the last run left them (learned or lowered), else as set.
    # A shared quota group is counted once, not once per key in it.
    shown = {k["key"]: k for k in status["keys"]}
    groups = []
    if not job.keys.keys:  # its keys are not set on this machine: the store's view
        groups = [[parse_limit(t) for t in k.get("limits") or []] for k in status["keys"]]
    for key, group in job.keys.groups():
        stored = (shown.get(key.masked) or {}).get("limits") or []
        try:
            in_force = [parse_limit(text) for text in stored]
        except PacelineError:
            in_force = []
        groups.append(in_force or [m.limit for m in group.meters()])
    leaders = {key.masked for key, _ in job.keys.groups()}
    today = sum(
        d["used"]
        for k in status["keys"]
        if k["key"] in leaders
        for d in k.get("today") or []
        if d["unit"] == "requests"
    )
    until_reset = next_day_start(now, zone(job.keys.day_resets)) - now
    cap = capacity_of(groups)
    daily = any(lim.daily and lim.unit == "requests" for g in groups for lim in g)
    p = make_plan(job.keys, pending, rpi, today, until_reset, cap=cap)

    def num(x: float) -> str:
        return "unlimited" if math.isinf(x) else f"{x:,.0f}"

    click.echo(
        f"plan for job {job.name!r}: {len(job.keys.keys)} key(s), {cap.groups} quota group(s)"
    )
    limits = sorted({lim.describe() for g in groups for lim in g}) or ["none known"]
    click.echo(f"  limits in force:    {', '.join(limits)}")
    per_day = f"{num(cap.per_day)} requests/day" if daily else "no daily limit"
    click.echo(f"  pool capacity:      {num(cap.per_minute)} requests/minute, {per_day}")
    click.echo(f"  requests per item:  {rpi:.2f}")
    items_day = f", {num(p.items_per_day)}/day" if daily else ""
    click.echo(f"  items:              {num(p.items_per_minute)}/minute{items_day} at full speed")
    click.echo(f"  pending:            {pending:,} items")
    if daily:
        click.echo(f"  left today:         {num(p.today_left)} requests")
    if p.seconds is None:
        click.echo(
            "  finish:             no limits known to plan on (set rpm=, rpd= or limits=, "
            "or run a little so they are learned)"
        )
    else:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(now + p.seconds))
        click.echo(f"  finish:             in about {format_duration(p.seconds)} ({when})")
    return 0


@cli.command()
@_jobfile
@_store_option
@click.option("--checksum", is_flag=True, help="Also print a SHA-256 of the written rows.")
@click.option(
    "--repair",
    is_flag=True,
    help="Put done items whose row is missing from the sink back in line (then run again).",
)
def verify(jobfile: Path, store: str | None, checksum: bool, repair: bool) -> int:
    """Compare source, store and sink: counts, ids missing or extra. Exit 1 on a mismatch."""
    from .verify import verify as run_verify

    job = load_job(jobfile)
    r = run_verify(job, store, checksum=checksum, repair=repair)
    click.echo(f"verify job {job.name!r}: {job.sink.describe()}")
    click.echo(f"  source:  {r.source:,} items ({r.invalid:,} invalid lines)")
    click.echo(
        f"  store:   {r.done:,} done, {r.failed:,} failed; "
        f"{r.not_done:,} not done (pending, failed, skipped)"
    )
    click.echo(f"  sink:    {r.sink:,} rows")
    click.echo(
        f"  missing: {r.missing:,} done but not in the sink"
        + (f" (e.g. {', '.join(r.examples['missing'])})" if r.missing else "")
    )
    click.echo(
        f"  extra:   {r.extra:,} in the sink but not in the source"
        + (f" (e.g. {', '.join(r.examples['extra'])})" if r.extra else "")
    )
    if r.unprocessed:
        click.echo(
            f"  not processed yet: {r.unprocessed:,} source items (pending or never read;"
            f" e.g. {', '.join(r.examples['unprocessed'])}): run `paceline run {jobfile}`"
        )
    if r.duplicates_in_sink:
        click.echo(f"  duplicate rows in the sink: {r.duplicates_in_sink:,}")
    if r.checksum:
        click.echo(f"  checksum: sha256:{r.checksum}")
    if r.repaired:
        click.echo(
            f"  repaired: {r.repaired:,} item(s) put back in line; "
            f"run `paceline run {jobfile}` to write them"
        )
    elif r.missing and not repair:
        click.echo(f"  `paceline verify {jobfile} --repair` puts the missing ones back in line")
    click.echo("  OK" if r.ok else "  MISMATCH")
    return 0 if r.ok else 1


@cli.command()
@_jobfile
@click.argument("ids", nargs=-1, required=True)
@_store_option
@click.option("--again", is_flag=True, help="Also items already done: do them once more.")
def expedite(jobfile: Path, ids: tuple[str, ...], store: str | None, again: bool) -> int:
    """Put items IDS first in line (a running job takes them within a second)."""
    job = load_job(jobfile)
    before = ops.expedite(job, ids, store, again=again)
    for item_id in ids:
        status = before.get(item_id)
        if status is None:
            click.echo(f"{item_id}: not found in the store (not read from the source yet?)")
        elif status == "done" and not again:
            click.echo(
                f"{item_id}: already done; `paceline expedite {jobfile} {item_id} --again` "
                "does it once more"
            )
        elif status == "running":
            click.echo(f"{item_id}: in flight now")
        elif is_invalid_id(item_id):
            click.echo(
                f"{item_id}: an invalid source line, nothing to run; fix the line, then "
                f"`paceline retry {jobfile} --invalid` reads it again"
            )
        else:
            click.echo(f"{item_id}: expedited (was {status})")
    return 0 if all(i in before and not is_invalid_id(i) for i in ids) else 1


@cli.command()
@_jobfile
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the failures as JSON.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    help="List at most N items (the counts by kind always cover all).",
)
def failures(jobfile: Path, store: str | None, as_json: bool, limit: int | None) -> int:
    """Items that failed for good: counts by kind of error, then each with its last error."""
    job = load_job(jobfile)
    report = ops.failures(job, store, limit=limit)
    listed = [
        {
            "id": f.id,
            "attempts": f.attempts,
            "error": f.error,
            "kind": ops.error_kind(f.error),
            "line": f.line,
            "invalid_line": f.invalid,
        }
        for f in report.items
    ]
    if as_json:
        kinds = [{"kind": k, "count": n} for k, n in report.kinds.most_common()]
        click.echo(json.dumps({"job": job.name, "failed": report.total, "kinds": kinds,
                               "items": listed}, indent=2))  # fmt: skip
        return 0
    if not report.total:
        click.echo(f"job {job.name!r}: no failed items")
        return 0
    click.echo(f"job {job.name!r}: {report.total:,} failed item(s)")
    for kind, n in report.kinds.most_common():
        click.echo(f"  {n:>8,}  {kind}")
    if listed:
        click.echo("")
    for f in listed:
        where = f" (line {f['line']})" if f["line"] else ""
        click.echo(f"{f['id']}{where}, attempts {f['attempts']}: {f['error']}")
    if limit is not None and report.total > len(listed):
        click.echo(f"... {report.total - len(listed):,} more (--limit)")
    if any(not f.invalid for f in report.items):
        click.echo(f"`paceline retry {jobfile}` puts them back in line")
    return 0


@cli.command()
@_jobfile
@_store_option
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["pending", "running", "retry", "done", "failed", "skipped"]),
    help="Only items of this status (repeatable).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE instead of standard output (refused if FILE exists).",
)
def export(
    jobfile: Path, store: str | None, fmt: str, statuses: tuple[str, ...], output: Path | None
) -> int:
    """Every item, one per line: id, status, attempts, error, line and its result row."""
    from .export import export_lines

    job = load_job(jobfile)
    lines = export_lines(job, store, statuses=statuses, fmt=fmt)
    if output is None:
        for line in lines:
            click.echo(line)
        return 0
    if output.exists():
        raise click.UsageError(f"{output} exists: choose another file or remove it")
    first = next(lines, None)  # a store that cannot be read leaves no empty file behind
    try:
        out = output.open("x", encoding="utf-8", newline="")
    except FileExistsError:
        raise click.UsageError(f"{output} exists: choose another file or remove it") from None
    except OSError as exc:
        raise click.UsageError(f"cannot write {output}: {exc.strerror}") from None
    n = 0
    with out:
        for line in itertools.chain([] if first is None else [first], lines):
            out.write(line + "\n")
            n += 1
    if fmt == "csv":
        n -= 1
    click.echo(f"{n:,} item(s) written to {output}", err=True)
    return 0


@cli.command()
@_jobfile
@_store_option
@click.option(
    "--invalid",
    is_flag=True,
    help="Also forget failed source lines and read the source again (after fixing them).",
)
def retry(jobfile: Path, store: str | None, invalid: bool) -> int:
    """Put items that failed for good back in line, with a fresh retry budget."""
    job = load_job(jobfile)
    result = ops.retry(job, store, invalid=invalid)
    click.echo(
        f"{result.put_back:,} failed item(s) put back; run `paceline run {jobfile}` to process them"
    )
    if result.invalid_left:
        click.echo(
            f"{result.invalid_left:,} invalid source line(s) stay failed: fix them in the "
            f"source, then `paceline retry {jobfile} --invalid`"
        )
    return 0


@cli.command()
@_jobfile
@_store_option
def stop(jobfile: Path, store: str | None) -> int:
    """Ask every worker running the job to stop gracefully (they finish what is in flight)."""
    job = load_job(jobfile)
    n = ops.stop(job, store)
    if n:
        click.echo(f"asked {n} worker(s) to stop; they finish the items in flight first")
    else:
        click.echo("no worker is running this job")
    return 0


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but a loopback address needs --token.",
)
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8765,
    show_default=True,
    help="0 picks a free port.",
)
@click.option(
    "--token",
    envvar="PACELINE_TOKEN",
    show_envvar=True,
    help="Token every API request must carry (Authorization: Bearer ...); required "
    "off loopback. Prefer the environment variable: a command line is visible to others.",
)
@click.option(
    "--max-upload",
    type=click.FloatRange(min=0.001),
    default=100.0,
    show_default=True,
    metavar="MB",
    help="Largest file a page may upload.",
)
@_notify_option
def serve(
    paths: tuple[Path, ...],
    host: str,
    port: int,
    token: str | None,
    max_upload: float,
    notify: str | None,
) -> int:
    """Serve the web dashboard and JSON API for the jobs in PATHS (job files, or folders
    searched for job files; default: the current folder)."""
    from .web import HINT, missing

    gone = missing()
    if gone:
        raise click.UsageError(f"paceline serve needs {', '.join(gone)}: {HINT}")
    from .web.app import serve as run_server

    run_server(
        list(paths),
        host=host,
        port=port,
        token=token,
        max_upload_mb=max_upload,
        notify=notify,
        echo=click.echo,
        warn=lambda message: click.echo(f"paceline serve: {message}", err=True),
    )
    return 0


@cli.command()
@click.option(
    "--items",
    type=click.IntRange(min=1, max=100_000),
    default=300,
    show_default=True,
    help="Documents in the demo job.",
)
@click.option(
    "--keys",
    "n_keys",
    type=click.IntRange(min=1, max=50),
    default=4,
    show_default=True,
    help="Simulated API keys.",
)
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("paceline-demo"),
    show_default=True,
    help="The demo's own folder: its input, job file, store and results.",
)
@click.option(
    "--progress", type=click.Choice(["auto", "live", "log"]), default="auto", show_default=True
)
@click.option(
    "--fresh", is_flag=True, help="Start over (removes only the files an earlier demo wrote)."
)
def demo(items: int, n_keys: int, workdir: Path, progress: str, fresh: bool) -> int:
    """Run a sample job against the built-in simulated API (no server, key or network).

    It writes only into its own folder (refusing a folder it did not make that holds
    other files); run again, it continues where it stopped.
    """
    from .demo import run_demo

    return run_demo(items=items, n_keys=n_keys, workdir=workdir, progress=progress, fresh=fresh)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8800,
    show_default=True,
    help="0 picks a free port.",
)
@click.option(
    "--keys",
    "keys",
    default=None,
    help="Keys to accept, comma-separated, each with optional limits: "
    "'sk-a,sk-b:rpm=3:tpm=1000' (default: any key, with the limits below).",
)
@click.option("--revoked", default="", help="Comma-separated keys answered as invalid.")
@click.option("--rpm", type=click.IntRange(min=1), default=None, help="Requests/minute per key.")
@click.option("--tpm", type=click.IntRange(min=1), default=None, help="Tokens/minute per key.")
@click.option(
    "--token-bucket",
    is_flag=True,
    help="Meter --tpm as a bucket refilled as it goes (Anthropic's), not a sliding minute.",
)
@click.option("--rpd", type=click.IntRange(min=1), default=None, help="Requests/day per key.")
@click.option(
    "--rph",
    type=click.IntRange(min=1),
    default=None,
    help="Requests/hour per key (GitHub's primary limit).",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="In-flight requests per key."
)
@click.option(
    "--latency",
    default="fixed:0.05",
    show_default=True,
    help="fixed:S, uniform:A,B or lognormal:MEDIAN,SIGMA (seconds).",
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests answered 5xx.",
)
@click.option(
    "--hang-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests that hang for --hang-seconds.",
)
@click.option("--hang-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.option(
    "--day-resets-tz",
    default="America/Los_Angeles",
    show_default=True,
    help="Time zone whose midnight resets daily quotas (Gemini: Pacific).",
)
@click.option(
    "--github-limit-status",
    type=click.Choice(["403", "429"]),
    default="403",
    show_default=True,
    help="Status GitHub-style answers give an exhausted token.",
)
@click.option("--seed", type=int, default=None, help="Seed for latency and faults.")
def sim(
    host: str,
    port: int,
    keys: str | None,
    revoked: str,
    rpm: int | None,
    tpm: int | None,
    token_bucket: bool,
    rpd: int | None,
    rph: int | None,
    concurrency: int | None,
    latency: str,
    error_rate: float,
    hang_rate: float,
    hang_seconds: float,
    day_resets_tz: str,
    github_limit_status: str,
    seed: int | None,
) -> int:
    """Serve the simulated rate-limited provider (OpenAI, Anthropic, GitHub, Gemini styles).

    Routes: POST /v1/chat/completions (OpenAI), POST /v1/messages (Anthropic),
    GET /repos/OWNER/REPO[/commits|/languages] (GitHub),
    POST /v1beta/models/MODEL:generateContent (Gemini), GET /_sim/stats.
    """
    from .sim import SimConfig, serve

    try:
        config = SimConfig.from_cli(
            keys,
            rpm=rpm,
            tpm=tpm,
            rpd=rpd,
            rph=rph,
            concurrency=concurrency,
            revoked=revoked,
            latency=latency,
            error_rate=error_rate,
            hang_rate=hang_rate,
            hang_seconds=hang_seconds,
            seed=seed,
            day_resets_tz=day_resets_tz,
            github_limit_status=int(github_limit_status),
            token_bucket=token_bucket,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    def ready(url: str) -> None:
        click.echo(f"paceline sim: serving on {url} (Ctrl+C to stop)")

    try:
        serve(config, host, port, on_ready=ready)
    except OSError as exc:
        raise click.UsageError(str(exc)) from None
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        code = cli.main(args=argv, prog_name="paceline", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        _error("interrupted")
        code = EXIT_INTERRUPTED
    except click.ClickException as exc:
        _error(exc.format_message().replace("\n", " "))
        code = EXIT_USAGE
    except PacelineError as exc:
        _error(str(exc))
        code = EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        code = EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("PACELINE_DEBUG"):
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
        _error(f"unexpected {type(exc).__name__}: {exc} (set PACELINE_DEBUG=1 for details)")
        code = 1
    if code == EXIT_INTERRUPTED:
        # A second signal while the interpreter winds down (joining threads) must not
        # turn the exit into a traceback or a signal death: leave now, all is committed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


def _error(message: str) -> None:
    click.echo(f"paceline: error: {redact(message)}", err=True)
