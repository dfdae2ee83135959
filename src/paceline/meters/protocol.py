"""What the limiter asks of a meter backend, and the records it gets back.

The limiter decides *which* key and *when*; a backend keeps the meters that make the
decision safe. It answers one question per key group, atomically: "reserve this cost on
every meter of the group and check the key's state, or tell me when you could"
(:meth:`MeterBackend.reserve`). The reservation it hands out is later settled on the
actual usage, refunded, or released. Key states (cooling, parked, disabled), learned and
lowered limits, the slowdown after 429s, the in-flight cap learned from concurrency limits,
what is left of fixed windows and daily usage live in the backend too, so with a shared
backend (Redis) every worker sees what one worker learned.

A fixed window's answers say what was left when each request was admitted. Of a window's
answers, the one that says least came from the request admitted last: every other request
answered was admitted before it, and is in its count. What is left now is that least
count less the requests still in flight (they may have been admitted after it), whatever
order requests reached the provider and answers came back (:meth:`MeterBackend.reconcile`).

Calls that need an answer are ``async``; calls that only tell (settle, release, refund,
key states, limits) are plain methods that return at once: the local backend applies them
on the spot, the Redis backend applies them to its local view at once and sends them in
order in the background (in the same round trip as the next reservation when there is one).

Every call that depends on time takes ``now``: ``None`` means the backend's own clock
(Redis's ``TIME`` for the Redis backend, so all machines share one clock).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from paceline.limits import Cost, Limit

__all__ = [
    "CAP_RECOVERY",
    "MIN_FACTOR",
    "RECOVERY",
    "SLOWDOWN",
    "THROTTLE_HOLD",
    "Answer",
    "DayUsage",
    "GroupSpec",
    "GroupView",
    "KeyState",
    "MeterBackend",
    "Refusal",
    "Reservation",
    "WindowUsage",
    "meter_id",
    "reset_edge",
]

#: How much a 429 that the meters did not foresee slows a group's request meters, and the
#: floor: its real limit is lower than configured, or shared with someone else.
SLOWDOWN, MIN_FACTOR = 0.85, 0.2
#: Seconds for a slowed-down group to recover its configured rate in full; also how long
#: a concurrency cap learned from the provider holds before it is forgotten.
RECOVERY = 600.0
#: A concurrency limit answered: the group's in-flight cap drops to this share of what was
#: in flight, and climbs back to just below the level that tripped it over CAP_RECOVERY
#: seconds (more answers of the same burst within THROTTLE_HOLD seconds cut no further).
#: Tripped again later, the level learned drops by a tenth (at least one): a limit on
#: requests in flight is found in one trip, one on their rate in a few.
CAP_CUT, CAP_RECOVERY, THROTTLE_HOLD = 0.75, 20.0, 2.0


def reset_edge(slack: float) -> float:
    """How long after an announced reset a fixed window is used again: the reset's own
    precision (an epoch in whole seconds may be floored by the provider), and a hair."""
    return max(0.001, slack)


def meter_id(limit: Limit) -> str:
    """The name of the meter that enforces ``limit`` in its group: unit and window.

    >>> meter_id(Limit(15, 60.0)), meter_id(Limit(10**6, 60.0, "tokens"))
    ('r60', 't60')
    >>> meter_id(Limit(8 * 10**4, 60.0, "output_tokens"))
    'o60'
    """
    if limit.unit == "concurrent":
        return "c"
    return f"{limit.unit[0]}{limit.seconds:g}"


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A key group as configured: keys sharing one set of meters.

    ``id`` is the fingerprint of the key that names the group (as the store does), never
    a secret; two jobs using the same key share its meters, which is right: the provider
    counts them together. ``tz`` is the time zone daily windows reset in.
    """

    id: str
    limits: tuple[Limit, ...] = ()
    tz: str | None = None
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyState:
    """A key's state: ``ready``, ``cooling`` or ``parked`` until ``until``, ``disabled``.

    ``until`` of infinity means for the run.
    """

    state: str = "ready"
    until: float = 0.0
    reason: str | None = None

    def merge(self, new: KeyState) -> KeyState:
        """This state after ``new`` was seen.

        Disabled is final; a short cool does not end a longer park; the same state again
        keeps the later ``until``; ``ready`` only ends a cooling (the caller knows it is
        over). Every backend and the limiter's own view apply these same rules.
        """
        if self.state == "disabled":
            return self
        if new.state == "ready":
            return KeyState("ready", self.until, self.reason) if self.state == "cooling" else self
        if self.state == "parked" and new.state == "cooling" and self.until >= new.until:
            return self
        until = max(self.until, new.until) if self.state == new.state else new.until
        if new.state == "disabled":
            until = self.until
        return KeyState(new.state, until, new.reason or self.reason)

    def blocks(self, now: float) -> bool:
        """Whether a request may not go now with this key."""
        return self.state == "disabled" or (
            self.state in ("cooling", "parked") and self.until > now
        )


class Refusal(enum.StrEnum):
    """Why a reservation was not made."""

    LATER = "later"
    """The group cannot admit the cost before the horizon (or before a new day begins)."""
    FULL = "full"
    """Every concurrency slot of the group is taken."""
    KEY = "key"
    """The key is disabled, or went cooling or parked while the request waited."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A cost reserved on every meter of a group, to settle, refund or release later.

    ``at`` is when the request may be sent, on the backend's clock; ``slot`` says whether it
    holds a concurrency slot (taken at once when ``at`` was now, else by
    :meth:`MeterBackend.begin`); ``epoch`` names the meters' incarnation, so a settle for
    meters that were lost and restarted since changes nothing. ``tracked``: it counts as
    in flight for the group's fixed windows until released. ``handle`` is the backend's
    own (the local backend keeps its token log entries there).
    """

    id: str
    group: str
    key: str
    at: float
    cost: Cost
    meters: tuple[str, ...] = ()
    slot: bool = False
    epoch: str = ""
    tracked: bool = False
    handle: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """A backend's answer to :meth:`MeterBackend.reserve` or :meth:`MeterBackend.begin`.

    ``now`` is the backend's clock when it answered: a granted request is sent
    ``at - now`` seconds later; a refused one could go at ``at``.
    """

    now: float
    at: float
    reservation: Reservation | None
    refusal: Refusal | None = None
    key_state: KeyState = KeyState()


@dataclass(frozen=True, slots=True)
class DayUsage:
    """What a daily (or N-day) meter has counted in its current window."""

    limit: Limit
    day_start: float
    resets_at: float
    used: float

    @property
    def exhausted(self) -> bool:
        return self.used > 0 and self.used + 1 > self.limit.count


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """What is left of a fixed window, and when it may be used again: its reset, and the
    reset's precision (``-inf``: not known yet)."""

    limit: Limit
    left: float
    resets_at: float

    @property
    def spent(self) -> bool:
        return self.left < 1


@dataclass(frozen=True, slots=True)
class GroupView:
    """A pure read of a group's meters: the limits in force (configured, learned, lowered)
    in display order (windows, then days, then concurrency), today's usage, slots taken,
    what is left of fixed windows."""

    id: str
    limits: tuple[Limit, ...]
    learned: tuple[Limit, ...] = ()
    today: tuple[DayUsage, ...] = ()
    in_flight: int = 0
    factor: float = 1.0
    windows: tuple[WindowUsage, ...] = ()


class MeterBackend(Protocol):
    """Where the meters of key groups live: in this process, or shared through Redis."""

    @property
    def shared(self) -> bool:
        """Whether other processes see the same meters (and the limiter polls for slots)."""
        ...

    @property
    def server_clock(self) -> bool:
        """Whether the backend reads its own clock: the limiter then passes ``now=None``."""
        ...

    def attach(self, groups: Sequence[GroupSpec]) -> None:
        """Get ready to meter these groups (in Redis they are registered on first use)."""
        ...

    async def start(self) -> None:
        """Open connections and background work (nothing for the local backend)."""
        ...

    async def aclose(self) -> None:
        """Send what is still queued, then close."""
        ...

    # -- admission ---------------------------------------------------------------------

    async def reserve(
        self,
        group: str,
        key: str,
        cost: Cost,
        *,
        horizon: float,
        take_slot: bool = True,
        now: float | None = None,
    ) -> Answer:
        """Check ``key``'s state and every meter of ``group``; reserve ``cost`` on all of
        them if it can be sent within ``horizon`` seconds, else refuse and say when.

        A request that can go now also takes a concurrency slot (``take_slot``); one that
        goes later takes it with :meth:`begin`. A refused reservation reserves nothing.
        """
        ...

    async def begin(self, reservation: Reservation, *, now: float | None = None) -> Answer:
        """The reserved send time has come: check the key again and take a slot.

        Refused (key gone bad, every slot taken), the reservation is refunded.
        """
        ...

    def estimate(self, group: str, cost: Cost, now: float) -> tuple[bool, float]:
        """Whether every concurrency slot of ``group`` is taken, and when its meters could
        admit ``cost``: exact for the local backend; for Redis, from its last answers and
        refreshes (Redis then decides)."""
        ...

    # -- settling (these only tell) ----------------------------------------------------

    def release(self, reservation: Reservation) -> None:
        """The request is over: free its concurrency slot (and its place in flight)."""
        ...

    def settle(self, reservation: Reservation, held: Cost, used: Cost) -> None:
        """The request holds ``held`` tokens (all, input, output) and the answer says it
        used ``used``: token meters move by the difference."""
        ...

    def refund(self, reservation: Reservation, held: Cost) -> None:
        """Nothing was spent: give back its requests and the ``held`` tokens."""
        ...

    # -- what answers teach ------------------------------------------------------------

    def key_state(self, key: str) -> KeyState:
        """The key's state as far as is known (pure)."""
        ...

    def set_key_state(self, key: str, state: KeyState) -> None:
        """Apply ``state`` to the key by :meth:`KeyState.merge`'s rules."""
        ...

    def learn(self, group: str, limit: Limit, used: float = 0.0) -> None:
        """Believe the provider: add a meter for ``limit``, or lower the one of its window
        (and make it fixed, if it was configured without saying and ``limit`` is fixed).

        A new smooth meter starts with ``used`` units spent now (what the provider counted
        already, and requests in flight it had not seen).
        """
        ...

    def reconcile(
        self,
        reservation: Reservation,
        meter: str,
        remaining: int | None,
        reset_at: float | None,
        slack: float = 0.0,
    ) -> None:
        """The answer to ``reservation`` says ``remaining`` were left of fixed window
        ``meter`` when it was admitted, and that the window resets at ``reset_at`` (known
        to ``slack`` seconds): see the module's notes. ``remaining`` of ``None``: the
        answer said nothing of the window (a transport error, an answer without the
        headers), so the request is taken as counted in it. Nothing for other meters."""
        ...

    def throttle(self, group: str, in_flight: int, now: float | None = None) -> None:
        """A concurrency limit was answered with ``in_flight`` requests in flight: cap the
        group's requests in flight below that, to recover slowly (:meth:`recover`)."""
        ...

    def exhaust(self, group: str, meter: str, until: float) -> None:
        """Nothing is left on meter ``meter`` (a :func:`meter_id`) before ``until``."""
        ...

    def slow_down(self, group: str, now: float | None = None) -> None:
        """A 429 the meters did not foresee: slow the group's request meters a little."""
        ...

    def recover(self, group: str, now: float | None = None) -> None:
        """A success: slowed request meters regain their rate, and a learned in-flight cap
        its level, over time."""
        ...

    # -- daily usage and display -------------------------------------------------------

    def restore_day(self, group: str, day_start: float, unit: str, used: float) -> None:
        """The store says ``used`` of ``unit`` were spent in the day starting ``day_start``;
        the meter keeps the larger of that and its own count."""
        ...

    def view(self, group: str, now: float) -> GroupView:
        """Everything about ``group`` for display and planning; never changes a meter."""
        ...

    async def refresh(self) -> None:
        """Bring the local view of shared state up to date (nothing for the local backend)."""
        ...
