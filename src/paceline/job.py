"""The job: a name, a source, a task, a sink, a key pool and options.

>>> job = Job("summaries", source=JSONL("docs.jsonl", id="doc_id"),
...           sink=SQLiteSink("out.db", table="summaries"))       # doctest: +SKIP
>>> @job.task
... async def summarize(item, ctx):
...     return {"words": len(item.data["text"].split())}          # doctest: +SKIP
>>> job.run()                                                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import SYSTEM_CLOCK, Clock
from .context import Context
from .cost import Price
from .errors import ConfigError
from .item import Item
from .keys import KeyPool
from .retry import Backoff
from .sinks import Batch, Sink, as_sink
from .sources import IterableSource, Source, as_source
from .store import check_target, is_postgres

if TYPE_CHECKING:
    from .engine import RunResult
    from .report import Reporter

__all__ = ["Job", "TaskFn"]

TaskFn = Callable[[Item, Context], Awaitable[dict[str, Any] | None] | dict[str, Any] | None]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Job:
    """A batch job. Define its task with :meth:`task`, then :meth:`run` it.

    ``retries`` is how many times a retryable failure is tried again (so ``retries + 1``
    attempts at most); ``retry_on`` lists exception types of your own that are retryable;
    ``timeout`` bounds one attempt of an ``async`` task, in seconds. ``needs(item)``
    returning false skips an item (counted as skipped, not done); ``priority(item)``
    orders the work, highest first. ``concurrency``
    (items in flight) is automatic when the job has keys: it grows until the keys' limits
    are the bound, up to ``max_concurrency``; without keys it is 16.
    """

    def __init__(
        self,
        name: str,
        *,
        source: Any,
        sink: Any = None,
        keys: KeyPool | None = None,
        retries: int = 5,
        concurrency: int | None = None,
        max_concurrency: int = 512,
        timeout: float | None = None,
        http_timeout: float = 60.0,
        backoff: Backoff | None = None,
        retry_on: tuple[type[BaseException], ...] = (),
        batch: Batch | None = None,
        prices: Mapping[str, Price] | None = None,
        needs: Callable[[Item], bool] | None = None,
        priority: Callable[[Item], float] | None = None,
        store: str | os.PathLike[str] | None = None,
        limiter: str | None = None,
        secret_fields: Iterable[str] = (),
    ) -> None:
        if not _NAME.match(name):
            raise ConfigError(
                f"job name {name!r}: use letters, digits, '.', '_' or '-' (it names the store file)"
            )
        if retries < 0:
            raise ConfigError("retries must be 0 or more")
        if concurrency is not None and concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1")
        if keys is not None and not isinstance(keys, KeyPool):
            raise ConfigError("keys must be a paceline.KeyPool")
        self.name = name
        self.source: Source = as_source(source)
        self.sink: Sink = as_sink(sink)
        self.keys = keys
        self.retries = retries
        self.concurrency = concurrency
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.http_timeout = http_timeout
        self.backoff = backoff or Backoff()
        self.retry_on = retry_on
        self.batch = batch or Batch()
        #: USD per million tokens by model: turns the answers' usage into cost.
        self.prices = dict(prices or {})
        #: ``needs(item)`` false: the item needs no work and is counted as skipped.
        self.needs = needs
        #: ``priority(item)``: higher goes first.
        self.priority = priority
        #: Fields of the source records kept out of the store and of error texts (e.g. a
        #: password): the task gets them from the source again when it runs.
        self.secret_fields = frozenset(secret_fields)
        one_shot = isinstance(self.source, IterableSource) and not callable(self.source.records)
        if self.secret_fields and one_shot:
            raise ConfigError(
                "secret_fields needs a source that can be read again: a file, a query, "
                "or a function returning the records"
            )
        #: Where the job's state lives: a SQLite file (relative to the job file's folder)
        #: or a ``postgresql://`` DSN; ``--store`` / ``PACELINE_STORE`` override it.
        self.store = store
        #: Where the keys' meters live: ``None`` in this process, or ``redis://…`` to share
        #: them between workers; ``--limiter`` / ``PACELINE_LIMITER`` override it.
        self.limiter = limiter
        self.task_fn: TaskFn | None = None
        #: Where the default store lives: the job file's folder when run by the CLI.
        self.home = Path.cwd()
        #: The job file it came from (set when loaded by the CLI), for messages.
        self.file: Path | None = None

    def task(self, fn: TaskFn) -> TaskFn:
        """Register the task: ``async def task(item, ctx) -> dict | None`` (or a plain def)."""
        if not callable(fn):
            raise ConfigError("@job.task must decorate a function")
        self.task_fn = fn
        return fn

    def store_target(self, store: str | os.PathLike[str] | None = None) -> str | Path:
        """Where the job's state is: ``store`` if given (a path relative to the current
        folder), else the job's own ``store`` (relative to the job file's folder), else
        ``.paceline/<job>.db`` beside the job file. A ``postgresql://`` DSN stays a str."""
        for given in (store, self.store):
            if given is not None:
                check_target(given)
        if store is not None:
            return store if isinstance(store, str) and is_postgres(store) else Path(store)
        if self.store is None:
            return self.home / ".paceline" / f"{self.name}.db"
        if isinstance(self.store, str) and is_postgres(self.store):
            return self.store
        path = Path(self.store).expanduser()
        return path if path.is_absolute() else self.home / path

    def store_path(self, store: str | os.PathLike[str] | None = None) -> Path:
        """The store file (SQLite stores only; see :meth:`store_target`)."""
        target = self.store_target(store)
        if isinstance(target, str):
            raise ConfigError(f"job {self.name!r} keeps its state in PostgreSQL, not in a file")
        return target

    async def run_async(
        self,
        *,
        store: str | os.PathLike[str] | None = None,
        concurrency: int | None = None,
        sequential: bool = False,
        max_items: int | None = None,
        grace: float = 30.0,
        until_quota: bool = False,
        per_day: int | None = None,
        budget: float | None = None,
        limiter: str | None = None,
        reporter: Reporter | None = None,
        clock: Clock = SYSTEM_CLOCK,
        install_signal_handlers: bool = False,
    ) -> RunResult:
        """Run until every item is done or failed for good (or a stop); see :meth:`run`."""
        from .engine import Engine
        from .report import notebook_reporter, run_with_reporter

        if reporter is None:
            reporter = notebook_reporter()  # a live widget in Jupyter; else nothing

        workers = 1 if sequential else (concurrency or self.concurrency)
        if workers is not None and workers < 1:
            raise ConfigError("concurrency must be at least 1")
        if max_items is not None and max_items < 0:
            raise ConfigError("max-items must be 0 or more")
        if per_day is not None and per_day < 0:
            raise ConfigError("per-day must be 0 or more")
        engine = Engine(
            self,
            self.store_target(store),
            concurrency=workers,
            max_items=max_items,
            grace=grace,
            clock=clock,
            until_quota=until_quota,
            per_day=per_day,
            budget=budget,
            limiter=limiter if limiter is not None else self.limiter,
        )
        return await run_with_reporter(engine, reporter, install_signal_handlers)

    def expedite(self, *ids: str, store: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """Put items first in line, also for a run going on in another process (it takes
        them within a second). Returns each known id's status before; failed or skipped
        items are put back. For on-access ("lazy") migration.
        """
        from .ops import expedite

        return expedite(self, ids, store)

    def run(self, **options: Any) -> RunResult:
        """Run the job to its end. Options as :meth:`run_async`.

        Called where an event loop already runs (a Jupyter notebook), the run goes on a
        thread with a loop of its own and this call waits for it; in async code, prefer
        ``await job.run_async()``.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run_async(**options))
        options["install_signal_handlers"] = False  # only the main thread may
        with ThreadPoolExecutor(1, thread_name_prefix="paceline-run") as pool:
            return pool.submit(asyncio.run, self.run_async(**options)).result()
