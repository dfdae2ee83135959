"""Showing a run: a live dashboard in a terminal, plain log lines elsewhere, a summary.

The reporter polls :meth:`Engine.snapshot` (cheap, no I/O) a few times a second; the
engine never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .cost import money

if TYPE_CHECKING:
    from .engine import Engine, RunResult, Snapshot

__all__ = [
    "LiveReporter",
    "LogReporter",
    "QuietReporter",
    "Reporter",
    "format_duration",
    "notebook_reporter",
    "run_with_reporter",
    "summary_text",
]


class Reporter(Protocol):
    """Follows a run while it goes and tells how it ended."""

    async def follow(self, engine: Engine) -> None: ...

    def note(self, message: str) -> None: ...

    def finish(self, result: RunResult) -> None: ...


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24:02d}h"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _rate(value: float) -> str:
    return f"{value:,.1f}/s" if value < 100 else f"{value:,.0f}/s"


def _clock_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def key_line(key: dict[str, Any]) -> str:
    """One key on one line: ``…a1b2: 1,204 requests · 3×429 · today 204/1,500 · ready``."""
    parts = [f"{key['key']}: {key['requests']:,} requests"]
    if key.get("tokens"):
        parts.append(f"{key['tokens']:,} tokens")
    parts.append(f"{key['rate_limited']:,}×429")
    for day in key.get("today") or []:
        unit = "" if day["unit"] == "requests" else f" {day['unit']}"
        parts.append(f"today {day['used']:,}/{day['limit']:,}{unit}")
    parts.append(str(key["state"]))
    if key.get("reason") and key["state"] != "ready":
        parts.append(str(key["reason"]))
    return " · ".join(parts)


def circuit_text(circuit: dict[str, Any]) -> str:
    """``the provider fails for every request since 14:03:07 (ConnectError); next probe
    in 4 s``."""
    since = time.strftime("%H:%M:%S", time.localtime(circuit["since"]))
    why = f" ({circuit['reason']})" if circuit.get("reason") else ""
    return (
        f"the provider fails for every request since {since}{why}; "
        f"next probe in {circuit.get('next_probe_in', 0):.0f} s"
    )


def cost_text(s: Snapshot) -> str:
    """``$1.23 in all · $0.0041/item · $0.35/minute`` (this run's rates)."""
    parts = [f"{money(s.cost_total)} in all"]
    if s.cost_per_item is not None:
        parts.append(f"{money(s.cost_per_item)}/item")
    if s.cost_per_minute is not None:
        parts.append(f"{money(s.cost_per_minute)}/minute")
    return " · ".join(parts)


def summary_text(result: RunResult) -> str:
    """The final summary, printed after every run."""
    s = result.snapshot
    jobfile = result.jobfile or "JOBFILE"
    if result.stop_reason == "max-items":
        head = f"stopped after --max-items ({s.done_this_run + s.failed_this_run} items)"
    elif result.stop_reason == "budget":
        head = "stopped: the budget (--budget) is spent"
    elif result.stop_reason == "per-day":
        head = "stopped: today's item budget (--per-day) is spent; run again tomorrow"
    elif result.stop_reason == "quota":
        head = "stopped: every key is out of quota" + (
            f" until {_clock_time(s.quota_until)}" if s.quota_until else ""
        )
    elif result.stop_reason == "no usable key":
        head = "stopped: no usable key left"
    elif result.error is not None:
        head = "stopped: it cannot go on (see the error below)"
    elif result.stop_reason == "stop requested":
        head = "stopped by `paceline stop`"
    elif result.interrupted:
        head = f"stopped ({result.stop_reason})"
    elif s.failed:
        head = "finished with failures"
    else:
        head = "finished"
    lines = [
        f"paceline: job {s.job!r} {head} in {format_duration(s.elapsed)}",
        f"  this run: {s.done_this_run:,} done, {s.failed_this_run:,} failed"
        f" · throughput avg {_rate(s.rate_avg)}, peak {_rate(s.rate_peak)}",
        f"  overall:  {s.done:,} done, {s.failed:,} failed, {s.pending + s.running:,} pending"
        f" of {s.total:,}",
    ]
    if s.skipped:
        lines.append(f"  skipped (need no work): {s.skipped:,}")
    if s.cost_total:
        lines.append(f"  cost: {cost_text(s)}")
    if s.duplicates:
        some = ", ".join(repr(i) for i in s.duplicate_examples)
        more = f" (e.g. {some})" if some else ""
        lines.append(f"  duplicate ids in the source (skipped): {s.duplicates:,}{more}")
    if s.total == 0 and s.source_done:
        lines.append("  the source is empty: there was nothing to do")
    for key in s.keys:
        lines.append(f"  key {key_line(key)}")
    for note in s.notes:
        lines.append(f"  note: {note}")
    lines.append(f"  results: {result.sink}")
    lines.append(f"  store:   {result.store}")
    if s.failed:
        lines.append(
            f"  failed items: `paceline failures {jobfile}` shows why; "
            f"`paceline retry {jobfile}` puts them back"
        )
    if result.interrupted or s.pending:
        lines.append("  run the same command again to continue where this run stopped")
    return "\n".join(lines)


class QuietReporter:
    """Shows nothing (library use, tests)."""

    async def follow(self, engine: Engine) -> None:
        return None

    def note(self, message: str) -> None:
        return None

    def finish(self, result: RunResult) -> None:
        return None


class LogReporter:
    """One plain line every ``every_items`` items or ``every_seconds`` seconds."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        every_items: int = 1000,
        every_seconds: float = 10.0,
        summary: IO[str] | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.summary = summary or sys.stdout
        self.every_items = max(1, every_items)
        self.every_seconds = every_seconds

    def line(self, s: Snapshot) -> str:
        finished = s.done + s.failed + s.skipped
        pct = 100.0 * finished / s.total if s.total else 0.0
        total = f"{s.total:,}" + ("" if s.source_done else "+")
        text = (
            f"[paceline] {s.job}: {finished:,}/{total} ({pct:.1f}%) done={s.done:,}"
            f" failed={s.failed:,} pending={s.pending:,} in_flight={s.running:,}"
            f" rate={_rate(s.rate_now)} avg={_rate(s.rate_avg)}"
            f" eta={format_duration(s.eta)}"
        )
        if s.quota_until:
            text += f" waiting: every key is out of quota until {_clock_time(s.quota_until)}"
        if s.circuit:
            text += f" paused: {circuit_text(s.circuit)}"
        return text

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    async def follow(self, engine: Engine) -> None:
        last_time = time.monotonic()
        last_count = 0
        notes_seen = 0
        while True:
            await asyncio.sleep(0.25)
            s = engine.snapshot()
            fresh = s.notes_total - notes_seen
            for note in s.notes[-fresh:] if fresh > 0 else []:
                self._write(f"[paceline] {note}")
            notes_seen = s.notes_total
            count = s.done_this_run + s.failed_this_run
            now = time.monotonic()
            if count // self.every_items > last_count // self.every_items or (
                now - last_time >= self.every_seconds
            ):
                self._write(self.line(s))
                last_time, last_count = now, count

    def note(self, message: str) -> None:
        self._write(f"[paceline] {message}")

    def finish(self, result: RunResult) -> None:
        print(summary_text(result), file=self.summary, flush=True)


def _line(text: str, style: str) -> Text:
    """One line of the dashboard: never wrapped; cut with an ellipsis when too long."""
    return Text(text, style, no_wrap=True, overflow="ellipsis")


class LiveReporter:
    """A live dashboard (rich) on a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._note: str | None = None

    def render(self, s: Snapshot) -> Group:
        """The dashboard for the console's width now: every line fits it (long ones end
        in an ellipsis), and narrow terminals (under 80 columns) get the short form."""
        narrow = self.console.width < 80
        finished = s.done + s.failed + s.skipped
        total = max(s.total, 1)
        head = Table.grid(expand=True)
        head.add_column(no_wrap=True, overflow="ellipsis")
        head.add_column(justify="right", no_wrap=True)
        title = Text.assemble(("paceline ", "bold cyan"), (s.job, "bold"))
        when = f"ETA {format_duration(s.eta)}"
        head.add_row(title, when if narrow else f"elapsed {format_duration(s.elapsed)} · {when}")
        bar = Table.grid(expand=True, padding=(0, 1))
        bar.add_column(ratio=1)
        bar.add_column(justify="right", no_wrap=True)
        more = "" if s.source_done else ("+" if narrow else "+ (reading source)")
        shown = f"{100.0 * finished / total:5.1f}%"
        bar.add_row(
            ProgressBar(total=total, completed=finished),
            shown if narrow else f"{shown}  {finished:,}/{s.total:,}{more}",
        )
        counts = Text.assemble(
            ("done ", "dim"),
            (f"{s.done:,}", "green"),
            ("  failed ", "dim"),
            (f"{s.failed:,}", "red" if s.failed else ""),
            ("  pending ", "dim"),
            f"{s.pending:,}",
            ("  in flight ", "dim"),
            f"{s.running:,}",
            no_wrap=True,
            overflow="ellipsis",
        )
        if s.retrying:
            counts.append(f"  (retrying {s.retrying:,})", "yellow")
        rate_words = ("now", "avg", "peak") if narrow else ("throughput now", "avg", "peak")
        rates = Text(
            f"{rate_words[0]} {_rate(s.rate_now)} · {rate_words[1]} {_rate(s.rate_avg)} · "
            f"{rate_words[2]} {_rate(s.rate_peak)}",
            "dim",
            no_wrap=True,
            overflow="ellipsis",
        )
        parts: list[object] = [head, bar, counts, rates]
        if s.cost_total:
            parts.append(_line(f"cost {cost_text(s)}", "dim"))
        if s.keys:
            parts.append(self._keys(s, narrow))
        if s.quota_until:
            until = _clock_time(s.quota_until)
            parts.append(_line(f"waiting: every key is out of quota until {until}", "yellow"))
        if s.circuit:
            parts.append(_line(f"paused: {circuit_text(s.circuit)}", "bold yellow"))
        for note in s.notes[-3:]:
            parts.append(_line(note, "yellow"))
        if s.errors:
            parts.append(_line("last errors:", "bold red"))
            for item_id, error in s.errors[-5:]:
                parts.append(_line(f"  {item_id}: {error[:300]}", "red"))
        if self._note:
            parts.append(_line(self._note, "yellow"))
        return Group(*parts)  # type: ignore[arg-type]

    def _keys(self, s: Snapshot, narrow: bool) -> Table:
        columns = ("key", "today", "state") if narrow else (
            "key", "requests", "tokens", "today", "429s", "state",
        )  # fmt: skip
        keys = Table(box=None, padding=(0, 2 if not narrow else 1), show_edge=False)
        for column in columns:
            keys.add_column(
                column, style="dim" if column == "key" else "", no_wrap=True, overflow="ellipsis"
            )
        for k in s.keys:
            today = ", ".join(f"{d['used']:,}/{d['limit']:,}" for d in k.get("today") or [])
            cells = {
                "key": k["key"], "requests": f"{k['requests']:,}", "tokens": f"{k['tokens']:,}",
                "today": today or "-", "429s": f"{k['rate_limited']:,}", "state": str(k["state"]),
            }  # fmt: skip
            keys.add_row(*(cells[c] for c in columns))
        return keys

    async def follow(self, engine: Engine) -> None:
        console = self.console
        with Live(
            self.render(engine.snapshot()),
            console=console,
            refresh_per_second=4,
            transient=False,
        ) as live:
            width = console.width
            try:
                while True:
                    await asyncio.sleep(0.25)
                    if console.width != width:
                        # After a resize the old frame's lines wrap differently and the
                        # cursor cannot find them all: clear the screen, draw afresh.
                        width = console.width
                        console.clear()
                    live.update(self.render(engine.snapshot()))
            finally:
                live.update(self.render(engine.snapshot()))

    def note(self, message: str) -> None:
        self._note = message

    def finish(self, result: RunResult) -> None:
        Console().print(summary_text(result), highlight=False, markup=False)


def notebook_reporter() -> Reporter | None:
    """In a Jupyter notebook, the live dashboard (rich renders it as a widget that
    refreshes in place); elsewhere ``None``: library use shows nothing by default."""
    console = Console()
    return LiveReporter(console) if console.is_jupyter else None


async def run_with_reporter(
    engine: Engine, reporter: Reporter | None, install_signal_handlers: bool
) -> RunResult:
    """Run ``engine`` while ``reporter`` follows it; SIGINT/SIGTERM stop it gracefully.

    The first signal stops taking new items and lets those in flight finish (within the
    grace period); a second one stops at once.
    """
    reporter = reporter or QuietReporter()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if install_signal_handlers else ()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if engine.snapshot().stopping is None:
            reporter.note(
                f"{name}: finishing {engine.in_flight} item(s) in flight "
                f"(up to {engine.grace:.0f}s); press Ctrl+C again to stop at once"
            )
        else:
            reporter.note(f"{name} again: stopping now")
        engine.stop("interrupted")

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    follower = asyncio.create_task(reporter.follow(engine))
    try:
        result = await engine.run()
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        for sig in signals:
            loop.remove_signal_handler(sig)
    reporter.finish(result)
    return result
