"""The jobs ``paceline serve`` shows: job files given by path, or found in folders.

A folder is searched (a few levels deep, skipping hidden folders, virtual environments and
caches) for Python files that look like job files (they mention paceline and assign
``job = ...``), so serving a project folder does not run its other scripts. Each job file
is loaded once, at start: a job's keys stay in the environment of the runs it starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from paceline._jobfile import load_job
from paceline.errors import ConfigError
from paceline.job import Job
from paceline.upload import Upload

__all__ = ["JobEntry", "Jobs", "find_job_files"]

_SKIP = {"__pycache__", "node_modules", "site-packages", "venv", "env", "build", "dist"}
_DEPTH = 4
_LOOKS_LIKE_JOB = re.compile(r"^job\s*(?::[^=\n]*)?=", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class JobEntry:
    """One served job: its name, its job file and the job loaded from it."""

    name: str
    file: Path
    job: Job

    @property
    def upload(self) -> Upload | None:
        """The job's upload source, when it takes its input as an upload."""
        return self.job.source if isinstance(self.job.source, Upload) else None


class Jobs:
    """The served jobs, by name, in a stable order."""

    def __init__(self, entries: Sequence[JobEntry]) -> None:
        self._by_name = {e.name: e for e in entries}

    def __iter__(self) -> Iterator[JobEntry]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> JobEntry | None:
        return self._by_name.get(name)

    @classmethod
    def load(cls, paths: Sequence[Path], warn: Callable[[str], None]) -> Jobs:
        """Load the job files in ``paths`` (files, or folders to search). A job file given
        by name must load; one found in a folder that does not is skipped with a warning.
        Two job files defining the same job name are refused."""
        entries: dict[str, JobEntry] = {}
        for path in paths or [Path.cwd()]:
            if not path.exists():
                raise ConfigError(f"no such job file or folder: {path}")
            explicit = path.is_file()
            for file in [path] if explicit else find_job_files(path):
                try:
                    job = load_job(file)
                except ConfigError as exc:
                    if explicit:
                        raise
                    message = str(exc)
                    where = "" if message.startswith(str(file)) else f"{file}: "
                    warn(f"skipped {where}{message}")
                    continue
                entry = JobEntry(job.name, file.resolve(), job)
                other = entries.get(job.name)
                if other is not None and other.file != entry.file:
                    raise ConfigError(
                        f"two job files define job {job.name!r}: {other.file} and {entry.file}"
                    )
                entries[job.name] = entry
        if not entries:
            where = ", ".join(str(p) for p in paths) or str(Path.cwd())
            raise ConfigError(f"no job files found in {where} (a job file defines `job`)")
        return cls(sorted(entries.values(), key=lambda e: e.name))


def find_job_files(folder: Path) -> list[Path]:
    """Python files under ``folder`` that look like job files, in a stable order."""
    found = []
    root_depth = len(folder.resolve().parts)
    for here, dirs, files in os.walk(folder.resolve()):
        depth = len(Path(here).parts) - root_depth
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in _SKIP and depth < _DEPTH
        )
        for name in sorted(files):
            if not name.endswith(".py") or name.startswith((".", "test_")):
                continue
            file = Path(here) / name
            try:
                text = file.read_text(errors="replace")
            except OSError:
                continue
            if "paceline" in text and _LOOKS_LIKE_JOB.search(text):
                found.append(file)
    return found
