"""What a run may spend: items (``--max-items``, ``--per-day``) and money (``--budget``).

Item budgets are counters in the store that every claim checks and moves in its own
transaction, so they hold for the job as a whole however many workers claim at once:
``run:<id>`` for the workers of one run, ``day:<local midnight>`` for a day. Cost is
summed in the store with each commit; a worker adds what it spent and not yet committed.
"""

from __future__ import annotations

import time

from paceline.clock import Clock
from paceline.cost import Price, Usage, money
from paceline.store import Budget, Store

from .progress import Progress
from .state import RunState

__all__ = ["Budgets", "local_day_start", "price_for"]


def local_day_start(now: float) -> float:
    """Epoch seconds of the local midnight that began the day holding ``now``.

    From the system's time-zone rules, not today's offset: on the day clocks change, the
    day began at the other offset (a fixed offset would put midnight an hour off).
    """
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


class Budgets:
    """Item and money budgets of one worker's run."""

    def __init__(
        self,
        *,
        max_items: int | None,
        per_day: int | None,
        budget: float | None,
        prices: dict[str, Price],
        clock: Clock,
        progress: Progress,
        state: RunState,
    ) -> None:
        self.max_items = max_items
        self.per_day = per_day
        self.budget = budget
        self.prices = prices
        self.clock = clock
        self.progress = progress
        self.state = state
        self.run_id = ""
        self.cost_committed = 0.0  # in the store (every worker's), as last read or added
        self.cost_run = 0.0  # priced by this worker in this run
        self.unsaved = 0.0  # priced, not yet committed
        self._unpriced: set[str | None] = set()

    # -- items -------------------------------------------------------------------------

    def day_counter(self) -> str:
        return f"day:{local_day_start(self.clock.time()):.0f}"

    def caps(self) -> list[Budget]:
        """The claim budgets this worker claims under."""
        caps: list[Budget] = []
        if self.max_items is not None:
            caps.append((f"run:{self.run_id}", self.max_items))
        if self.per_day is not None:
            caps.append((self.day_counter(), self.per_day))
        return caps

    def open(self, store: Store, run_id: str) -> None:
        """Start from what the store says was spent (items today, money in all)."""
        self.run_id = run_id
        self.cost_committed = store.cost()
        if self.budget is not None and self.cost_committed >= self.budget:
            self.progress.note(
                f"budget of {money(self.budget)} already spent ({money(self.cost_committed)})"
            )
            self.state.stopping = "budget"
            return
        reason = self.spent(store)
        if reason is not None:
            self.state.finish_soft(reason)

    def spent(self, store: Store) -> str | None:
        """The item budget that is used up, if one is (after a claim that got nothing)."""
        if self.max_items is not None and store.counter(f"run:{self.run_id}") >= self.max_items:
            return "max-items"
        if self.per_day is not None and store.counter(self.day_counter()) >= self.per_day:
            return "per-day"
        return None

    # -- money -------------------------------------------------------------------------

    @property
    def cost_total(self) -> float:
        return self.cost_committed + self.unsaved

    def record_usage(self, usage: Usage) -> None:
        """Price an answer's tokens; stop the run when the budget is spent."""
        price = price_for(self.prices, usage.model)
        if price is None:
            if usage.model not in self._unpriced:
                self._unpriced.add(usage.model)
                self.progress.note(f"no price for model {usage.model!r}: its cost is not counted")
            return
        cost = price.of(usage)
        self.cost_run += cost
        self.unsaved += cost
        if self.budget is not None and self.cost_total >= self.budget and self.state.taking:
            self.progress.note(f"budget of {money(self.budget)} reached")
            self.state.stop("budget")

    def take_unsaved(self) -> float:
        """The cost to commit now (it counts as committed from here on)."""
        cost, self.unsaved = self.unsaved, 0.0
        self.cost_committed += cost
        return cost

    def refresh(self, committed: float) -> None:
        """The store's total, read by the heartbeat (other workers add to it too)."""
        self.cost_committed = max(self.cost_committed, committed)
        if self.budget is not None and self.cost_total >= self.budget and self.state.taking:
            self.progress.note(f"budget of {money(self.budget)} reached")
            self.state.stop("budget")


def price_for(prices: dict[str, Price], model: str | None) -> Price | None:
    """The price of ``model``, or of the longest priced name it starts with
    (``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``)."""
    if model is None:
        return None
    if model in prices:
        return prices[model]
    names = [name for name in prices if model.startswith(name)]
    return prices[max(names, key=len)] if names else None
