"""Loading a job file: a Python file that defines ``job = paceline.Job(...)``."""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from pathlib import Path

from ._redact import redact, remember
from .errors import ConfigError, PacelineError
from .job import Job
from .keys import KeyPool, job_folder
from .sources import SQL

__all__ = ["load_job"]


def load_job(path: str | os.PathLike[str]) -> Job:
    """Run the job file and return its ``job``; any problem is one readable ConfigError."""
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"job file not found: {file}")
    if not file.is_file():
        raise ConfigError(f"job file is not a file: {file}")
    folder = str(file.parent.resolve())
    # Helpers beside the job file import as they would when running it with python.
    if folder not in sys.path:
        sys.path.insert(0, folder)
    token = job_folder.set(Path(folder))
    try:
        namespace = _import(file)
    except PacelineError as exc:
        raise ConfigError(redact(f"{file}: {exc}")) from None
    except SyntaxError as exc:
        raise ConfigError(redact(f"{file}:{exc.lineno}: syntax error: {exc.msg}")) from None
    except Exception as exc:
        line = _line_in(file, exc)
        where = f"{file}:{line}" if line else str(file)
        raise ConfigError(redact(f"{where}: {type(exc).__name__}: {exc}")) from None
    finally:
        job_folder.reset(token)
    job = namespace.get("job")
    if job is None:
        raise ConfigError(f"{file} does not define `job` (job = paceline.Job(...))")
    if not isinstance(job, Job):
        raise ConfigError(f"{file}: `job` is a {type(job).__name__}, not a paceline.Job")
    if job.task_fn is None:
        raise ConfigError(f"{file}: job {job.name!r} has no task (decorate one with @job.task)")
    _remember_keys(namespace)
    job.home = file.parent.resolve()
    job.file = file
    _anchor(job, job.home)
    bind = getattr(job.source, "bind", None)
    if callable(bind):  # a source that lives beside its job (paceline.Upload's inbox)
        bind(job)
    return job


def _remember_keys(namespace: dict[str, object]) -> None:
    """Remember the keys of every pool the job file made, so no text shows them."""
    for value in list(namespace.values()):
        pools = [value] if isinstance(value, KeyPool) else []
        if isinstance(value, Job) and value.keys is not None:
            pools.append(value.keys)
        for pool in pools:
            remember((k.secret, k.masked) for k in pool.keys)


def _anchor(job: Job, folder: Path) -> None:
    """Relative paths in a job file mean its own folder, wherever the command runs from
    (``paceline run jobs/x.py`` reads ``jobs/input.jsonl``, as the store already is)."""
    for part in (job.source, job.sink):
        path = getattr(part, "path", None)
        if isinstance(path, Path) and not path.is_absolute():
            part.path = folder / path  # type: ignore[union-attr]
    if isinstance(job.source, SQL) and not job.source.postgres:
        target = Path(job.source.target)
        if not target.is_absolute():
            job.source.target = str(folder / target)


def _import(file: Path) -> dict[str, object]:
    """Run the job file as a module named after it (``job.py`` → ``job``), registered in
    ``sys.modules``, so functions defined there can be sent to worker processes by name
    (``ctx.run_cpu``); the processes import it from the job file's folder."""
    name = file.stem if file.stem.isidentifier() else "paceline_job"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load job file {file}")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _remember_keys(vars(module))  # the pools made before it failed: their keys
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
        raise
    return vars(module)


def _line_in(file: Path, exc: BaseException) -> int | None:
    target = str(file.resolve())
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if str(Path(frame.filename).resolve()) == target:
            line = frame.lineno
    return line
