"""The run's numbers: counts by status, rates, recent errors and notes.

Counts start from the store and move with every change this worker makes; on a shared
store the heartbeat replaces them with the store's (other workers move them too). Rates
are sampled by the engine's tick, so reading a snapshot changes nothing.
"""

from __future__ import annotations

from collections import deque

from paceline.clock import Clock

__all__ = ["Progress", "Rates"]


class Rates:
    """Throughput now (over the last few seconds), on average, and at its peak."""

    def __init__(self, clock: Clock, window: float = 5.0) -> None:
        self.clock = clock
        self.window = window
        self.start = clock.monotonic()
        self.samples: deque[tuple[float, int]] = deque([(self.start, 0)])
        self.peak = 0.0
        self.now = self.avg = 0.0

    def sample(self, count: int) -> None:
        now = self.clock.monotonic()
        self.samples.append((now, count))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        self.now = (count - c0) / (now - t0) if now - t0 >= 0.5 else 0.0
        elapsed = now - self.start
        self.avg = count / elapsed if elapsed > 0 else 0.0
        if elapsed >= 1.0:
            self.peak = max(self.peak, self.now)
        self.peak = max(self.peak, self.avg)

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.start


class Progress:
    """Counts by status, what this run finished, duplicates, errors and notes."""

    def __init__(self, clock: Clock) -> None:
        self.counts: dict[str, int] = {}
        self.done_run = 0
        self.failed_run = 0
        self.duplicates = 0
        self.source_done = False
        self.errors: deque[tuple[str, str]] = deque(maxlen=5)
        self.notes: deque[str] = deque(maxlen=5)
        self.notes_total = 0
        self._told: set[str] = set()
        self.rates = Rates(clock)

    def move(self, src: str, dst: str, n: int) -> None:
        if n:
            self.counts[src] = self.counts.get(src, 0) - n
            self.counts[dst] = self.counts.get(dst, 0) + n

    def add(self, status: str, n: int) -> None:
        if n:
            self.counts[status] = self.counts.get(status, 0) + n

    def note(self, message: str, *, once: bool = False) -> None:
        """Something the user should see (a key disabled, a limit learned); ``once``
        shows a message only the first time."""
        if once:
            if message in self._told:
                return
            self._told.add(message)
        self.notes.append(message)
        self.notes_total += 1

    def error(self, where: str, text: str) -> None:
        self.errors.append((where, text))

    def tick(self) -> None:
        self.rates.sample(self.done_run + self.failed_run)
