"""The run's shared state: why it is stopping, what went wrong, and who to wake.

Every piece of the engine (ingest, dispatch, commit, membership) holds the one
:class:`RunState` of its run and nothing else of the others' state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["SOFT_STOPS", "RunState"]

#: Stops that let the queue drain (what was claimed is still done): a budget was reached.
SOFT_STOPS = frozenset({"max-items", "per-day"})


class RunState:
    """Stop reason, fatal error, and the events the run's tasks wait on."""

    def __init__(self) -> None:
        self.stopping: str | None = None
        self.fatal: BaseException | None = None
        self.progress = asyncio.Event()  # something moved: the feeder looks again
        self.hard_stop = asyncio.Event()  # stop now, in-flight work is abandoned
        self.interrupt = asyncio.Event()  # a graceful stop began
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a graceful stop begins (e.g. wake the limiter's waiters)."""
        self._on_stop.append(callback)

    def stop(self, reason: str = "interrupted") -> None:
        """Take no new items and let those in flight finish; a second stop is immediate."""
        if self.stopping is None or self.stopping in SOFT_STOPS:
            self.stopping = reason
            self.progress.set()
            self.interrupt.set()
            for callback in self._on_stop:
                callback()
        else:
            self.hard_stop.set()

    def finish_soft(self, reason: str) -> None:
        """A budget is reached: take no more items, finish those already claimed."""
        if self.stopping is None:
            self.stopping = reason
            self.progress.set()

    def halt(self, reason: str) -> None:
        """Stop at once for ``reason`` (no usable key, a fatal error)."""
        self.stopping = self.stopping or reason
        self.hard_stop.set()
        self.progress.set()

    def fail(self, exc: BaseException) -> None:
        """A fatal error: remember the first, stop at once."""
        if self.fatal is None:
            self.fatal = exc
        self.halt("error")

    @property
    def interrupted(self) -> bool:
        return self.stopping is not None and self.stopping not in (
            *SOFT_STOPS, "quota", "budget",
        )  # fmt: skip

    @property
    def taking(self) -> bool:
        """Whether new items may still be taken."""
        return self.stopping is None
