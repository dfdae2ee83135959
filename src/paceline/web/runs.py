"""Runs started from the page: ``paceline run JOBFILE --progress log ...`` as a detached
process.

Each run is its own session (``start_new_session``): it survives the page being closed,
``serve`` being stopped or restarted, and a Ctrl+C in serve's terminal. Its output goes to
``.paceline/logs/<job>/<time>.log`` beside the job file. Whether a job runs is asked of
its store, never of this process, so runs started by the CLI or by an earlier ``serve``
count too. Stopping is ``paceline stop``'s request in the store (every worker finishes
what is in flight and exits); a run of ours that has not reached its store yet gets
SIGTERM instead (the CLI's graceful stop).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paceline import ops
from paceline.errors import ConfigError, JobAlreadyRunning
from paceline.status import job_status

from .jobs import JobEntry

__all__ = ["Launcher", "StartedRun"]

#: How long a start waits for the new run to show in its store.
START_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class StartedRun:
    """A run just started: its process id, its log and the command line."""

    pid: int
    log: Path
    command: list[str]
    state: str

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "log": str(self.log), "command": self.command, "state": self.state}


class Launcher:
    """Starts and stops runs of the served jobs; reaps the processes it started."""

    def __init__(
        self,
        *,
        notify: str | None = None,
        python: str = sys.executable,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.notify = notify
        self.python = python
        self.start_timeout = start_timeout
        # Every process started and not yet reaped, newest last.
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._lock = threading.Lock()

    def command(self, entry: JobEntry, *, sequential: bool, concurrency: int | None) -> list[str]:
        cmd = [self.python, "-m", "paceline", "run", str(entry.file), "--progress", "log"]
        cmd += ["--log-interval", "5"]
        if sequential:
            cmd.append("--sequential")
        elif concurrency is not None:
            cmd += ["--concurrency", str(concurrency)]
        return cmd  # --notify goes by the environment: a webhook's path is often its secret

    def start(
        self, entry: JobEntry, *, sequential: bool = False, concurrency: int | None = None
    ) -> StartedRun:
        """Start a run and wait until its store shows it (or it has ended already).

        Raises :class:`JobAlreadyRunning` when a live worker holds the job, and
        :class:`ConfigError` with the run's own one-line error when it exits at once.
        """
        status = job_status(entry.job)
        if status["state"] == "running":
            raise JobAlreadyRunning(_running_message(status))
        logs = _logs(entry)
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}.log"
        cmd = self.command(entry, sequential=sequential, concurrency=concurrency)
        # The run uses the job's own store, and has no use for serve's token.
        env = {k: v for k, v in os.environ.items() if k not in ("PACELINE_STORE", "PACELINE_TOKEN")}
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PACELINE_NOTIFY", None)
        if self.notify:
            env["PACELINE_NOTIFY"] = self.notify
        with log.open("ab") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=entry.job.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        with self._lock:
            self._children.append((entry.name, proc))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = proc.poll()
            status = job_status(entry.job)
            live = {w["pid"] for w in status["workers"]}
            if proc.pid in live:
                return StartedRun(proc.pid, log, cmd, "running")
            if code is not None:
                if code == 2:
                    message = _last_error(log) or "the run stopped at once (exit code 2)"
                    if "already running" in message:
                        raise JobAlreadyRunning(message)
                    raise ConfigError(message)
                return StartedRun(proc.pid, log, cmd, status["state"])
            time.sleep(0.1)
        return StartedRun(proc.pid, log, cmd, "starting")

    def stop(self, entry: JobEntry) -> dict[str, Any]:
        """Ask every worker of the job to stop gracefully; returns how many were asked."""
        try:
            asked = ops.stop(entry.job)
        except ConfigError:
            asked = 0  # no store yet: nothing has run
        signalled = False
        if asked == 0:
            with self._lock:
                ours = [p for name, p in self._children if name == entry.name]
            proc = ours[-1] if ours else None
            if proc is not None and proc.poll() is None:
                # Ours, but not in its store yet: the CLI stops gracefully on SIGTERM.
                os.kill(proc.pid, signal.SIGTERM)
                signalled = True
        return {"asked": asked, "signalled": signalled}

    def reap(self) -> None:
        """Collect the exit status of runs that ended (no zombies left behind)."""
        with self._lock:
            self._children = [(n, p) for n, p in self._children if p.poll() is None]

    def close(self) -> None:
        """Leave the runs going; reap each when it ends, if this process lives that long."""
        with self._lock:
            for _, proc in self._children:
                threading.Thread(target=proc.wait, name="paceline-reap", daemon=True).start()
            self._children = []

    def latest_log(self, entry: JobEntry) -> Path | None:
        """The log of the job's most recent run started from a page (any serve's)."""
        try:
            found = [p for p in _logs(entry).iterdir() if p.suffix == ".log"]
        except OSError:
            return None
        return max(found, key=lambda p: p.name, default=None)


def _logs(entry: JobEntry) -> Path:
    return entry.job.home / ".paceline" / "logs" / entry.name


def _running_message(status: dict[str, Any]) -> str:
    run = status.get("run") or {}
    return (
        f"job {status['job']!r} is already running (pid {run.get('pid')} on "
        f"{run.get('host')}): stop it first or wait for it to finish"
    )


def _last_error(log: Path) -> str | None:
    """The run's own one-line error (``paceline: error: ...``) from its log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("paceline: error: "):
            return line.removeprefix("paceline: error: ")
    return None
