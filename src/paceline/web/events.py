"""Live updates: one poll of the store per watched job, shared by every page watching it.

A :class:`Feed` reads its job's status about once a second while at least one client
listens, and only then; each client gets the latest status when it changes (a slow
client skips to the newest, it never queues). So ten open pages of one job cost one
store read a second, and a job nobody watches costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from paceline.errors import PacelineError

__all__ = ["Feed", "Hub"]

log = logging.getLogger("paceline.web")


class Feed:
    """The latest status of one watched thing, and a signal when it changes."""

    def __init__(self, read: Callable[[], Any], interval: float) -> None:
        self.read = read
        self.interval = interval
        self.payload: str | None = None
        self.version = 0
        self.listeners = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def publish(self, data: Any) -> None:
        text = json.dumps(data, sort_keys=True, default=str)
        if text != self.payload:
            self.payload = text
            self.version += 1
            self.wake()

    def wake(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def poll(self) -> None:
        while True:
            try:
                data = await asyncio.to_thread(self.read)
            except PacelineError as exc:
                data = {"error": str(exc)}
            except Exception as exc:
                log.exception("reading a status for the event stream failed")
                data = {"error": f"cannot read the status ({type(exc).__name__})"}
            self.publish(data)
            await asyncio.sleep(self.interval)


class Hub:
    """The feeds being watched, by key (a job name, or ``*`` for the jobs list)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.closed = False
        self._feeds: dict[str, Feed] = {}

    async def watch(self, key: str, read: Callable[[], Any]) -> AsyncIterator[str]:
        """Yield the status (as JSON text) now and on each change, until the hub closes
        or the caller stops iterating (the client went away)."""
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(read, self.interval)
        feed.listeners += 1
        if feed.task is None:
            feed.task = asyncio.create_task(feed.poll())
        seen = 0
        try:
            while not self.closed:
                changed = feed.changed
                if feed.version > seen and feed.payload is not None:
                    seen = feed.version
                    yield feed.payload
                    continue
                await changed.wait()
        finally:
            feed.listeners -= 1
            if feed.listeners == 0:
                self._feeds.pop(key, None)
                if feed.task is not None:
                    feed.task.cancel()

    def poke(self, key: str) -> None:
        """Read ``key`` again now (after a start, stop or retry), not in a second."""
        feed = self._feeds.get(key)
        if feed is not None and feed.task is not None:
            feed.task.cancel()
            feed.task = asyncio.create_task(feed.poll())

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self.closed = True
        for feed in list(self._feeds.values()):
            feed.wake()

    @property
    def watched(self) -> dict[str, int]:
        """Listeners per watched key (for tests and the curious)."""
        return {k: f.listeners for k, f in self._feeds.items()}
