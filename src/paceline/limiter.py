"""The limiter: which key may send which request, and when.

Every request *reserves* its cost on a key before it is sent: the limiter looks at each
usable key, estimates when its group's meters would admit the cost, and asks the meter
backend to reserve it on the key that can admit it soonest (one atomic call per group:
the key's state and every meter of its group). The backend answers with a send time (so
the next request sees the slot as taken) or with when it could; the limiter sleeps until
the slot's time. The answer then *settles* the reservation: actual tokens replace the
estimate (input and output apart, where the provider meters them apart), a 429 cools that
key alone and slows its meters a little, a concurrency limit answered (GitHub's secondary
limit) caps the group's requests in flight, a spent daily quota parks the key until its
reset, a rejected key is disabled, limits the provider announces but nobody configured are
learned (with the window the answer gives, smooth or fixed), and what a fixed window's
answer says is left reconciles its meter.

The meters live in a :class:`~paceline.meters.MeterBackend`: in this process (the default),
or in Redis, shared by every worker, so a 429 or a revoked key seen by one worker is known
to all. The waiting (sleeps, the queue for concurrency slots) stays in each process.

Keys that share one upstream quota form a group with one set of meters.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .clock import Clock
from .errors import MetersUnavailable, NoUsableKey, PacelineError
from .feedback import Feedback, Verdict, Window
from .limits import Cost, Limit, Unit
from .meters.protocol import (
    RECOVERY,
    GroupSpec,
    GroupView,
    KeyState,
    MeterBackend,
    Refusal,
    Reservation,
    meter_id,
)

__all__ = [
    "HORIZON",
    "RECOVERY",
    "Lease",
    "Limiter",
    "MeteredKey",
    "QuotaWait",
    "Stopping",
    "WaitLedger",
    "wait_ledger",
]


@dataclass(slots=True)
class WaitLedger:
    """The time one attempt spent waiting for the limiter (a slot, a window's room):
    the key's pace, not the provider's slowness, so it does not count against the
    attempt's timeout. ``since``: when a wait going on now began (monotonic)."""

    total: float = 0.0
    since: float | None = None

    def waited(self, now: float) -> float:
        """Seconds waited so far, a wait going on now included."""
        return self.total + (now - self.since if self.since is not None else 0.0)


#: The ledger of the attempt running in this context (set by the engine for each attempt).
wait_ledger: ContextVar[WaitLedger | None] = ContextVar("wait_ledger", default=None)

#: A reservation further ahead than this is not taken: the limiter waits and looks again,
#: so a key that comes back (or a stop) is noticed.
HORIZON = 30.0
#: With a shared backend, how often a request waiting for a concurrency slot asks again
#: (slots freed by other processes wake nobody here).
SLOT_POLL = 0.05
#: How often a shared backend's key states, limits and daily usage are read back.
REFRESH = 1.0
#: The longest wait between two attempts to reach an unreachable backend.
MAX_BACKOFF = 2.0
#: Scopes of a 429 that mean "too many at once" rather than "too many in the window".
CONCURRENCY_SCOPES = frozenset({"secondary", "concurrent"})


class Stopping(PacelineError):
    """The run is stopping: a request that has not been sent gives up its slot."""


class QuotaWait(PacelineError):
    """Every usable key is out of quota until ``until`` (raised when asked to stop then)."""

    def __init__(self, until: float) -> None:
        super().__init__("every key is out of quota")
        self.until = until


_NOTHING = Cost()


class _Grouped(Protocol):
    @property
    def spec(self) -> GroupSpec: ...


class MeteredKey(Protocol):
    """What the limiter needs of a key (:class:`paceline.keys.Key` is one).

    ``state``, ``until`` and ``reason`` are this process's view of the key's state, kept
    up to date from the backend; the counters are this process's own.
    """

    @property
    def fingerprint(self) -> str: ...
    @property
    def masked(self) -> str: ...
    @property
    def group(self) -> _Grouped: ...

    state: str
    until: float
    reason: str | None
    requests: int
    tokens: int
    rate_limited: int
    errors: int
    consecutive_429: int


K = TypeVar("K", bound=MeteredKey)


@dataclass(slots=True)
class Lease(Generic[K]):
    """A key and a slot for one request; settle it with the answer, then release it."""

    key: K
    cost: Cost
    sent_at: float
    reservation: Reservation | None = None
    #: the tokens it holds (all, input, output): the estimate, then what the answer said
    held: Cost = _NOTHING
    released: bool = False
    refunded: bool = False
    #: requests of this process in flight on the key's group when it was sent (itself too)
    flying: int = 1
    #: the fixed windows its answer said something of
    reported: frozenset[str] = frozenset()

    @property
    def tokens(self) -> int:
        return self.held.tokens


def _state(key: MeteredKey) -> KeyState:
    return KeyState(key.state, key.until, key.reason)


class Limiter(Generic[K]):
    """Hands out keys and slots for a pool's keys.

    The engine's side of it: :meth:`start` and :meth:`aclose` around a run (they open and
    close a shared backend's connection; nothing for the local one), :meth:`close` to wake
    every waiting acquirer with :class:`Stopping`, :attr:`rejections` and :attr:`waiting`
    for the autoscaler, :meth:`quota_wait`, and :meth:`day_usage` / :meth:`restore_day`
    to persist today's spent quota.
    """

    def __init__(
        self,
        keys: Sequence[K],
        clock: Clock,
        backend: MeterBackend,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.keys = list(keys)
        self.clock = clock
        self.backend = backend
        self.on_event = on_event or (lambda message: None)
        self.stop_when_out_of_quota = False
        self.waiting = 0  # acquirers sleeping for a slot now
        self.waited = 0  # acquirers that had to wait, ever
        self.rejections = 0  # 429s, ever (the engine's autoscaler watches it)
        self._told: set[str] = set()
        self._told_ignored: set[str] = set()  # keys told about an absurd wait ignored
        self._flying: dict[str, int] = {}  # this process's requests in flight, per group
        self._closed = asyncio.Event()
        self._next = 0
        # FIFO of requests waiting for a concurrency slot on any key
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._unreachable = False
        self._refresher: asyncio.Task[None] | None = None
        backend.attach(self.groups())

    # -- the run -----------------------------------------------------------------------

    def groups(self) -> list[GroupSpec]:
        """Each key group once, in the order of its first key."""
        return list({key.group.spec.id: key.group.spec for key in self.keys}.values())

    def use(self, backend: MeterBackend) -> None:
        """Meter with ``backend`` from now on (before :meth:`start`)."""
        if backend is not self.backend:
            backend.attach(self.groups())
            self.backend = backend

    async def start(self) -> None:
        """Open the backend; with a shared one, read its state back every second (which
        also keeps this process's in-flight slots alive). The first acquire starts it too,
        but only :meth:`aclose` ends it."""
        await self.backend.start()
        self._start_refresher()

    def _start_refresher(self) -> None:
        if self.backend.shared and self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def aclose(self) -> None:
        """Send what the backend still holds and close it."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        await self.backend.aclose()

    def reopen(self) -> None:
        """Ready for a new run (after :meth:`close`)."""
        self._closed = asyncio.Event()
        self.waiting = 0

    def close(self) -> None:
        """Wake every waiting acquirer with :class:`Stopping`."""
        self._closed.set()

    async def _refresh_forever(self) -> None:
        while True:
            await self.clock.sleep(REFRESH)
            try:
                await self.backend.refresh()
            except MetersUnavailable as exc:
                self._tell_unreachable(exc)
                continue
            self._tell_reachable()
            for key in self.keys:
                self._see(key, self.backend.key_state(key.fingerprint))

    # -- acquiring ---------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait([sleeper, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closed.cancel()
        if self._closed.is_set():
            raise Stopping("stopping")

    def _now_arg(self, now: float) -> float | None:
        # A backend with its own clock (Redis's TIME) is not told the time.
        return None if self.backend.server_clock else now

    def _ready_at(self, key: K, cost: Cost, now: float) -> float:
        at = max(now, key.until) if key.state in ("cooling", "parked") else now
        return max(at, self.backend.estimate(key.group.spec.id, cost, now)[1])

    def _best(self, cost: Cost, now: float) -> tuple[K | None, float, bool, float]:
        """The key that admits ``cost`` soonest, preferring keys with a free in-flight slot;
        and when the next best one could (a reservation later than that is not worth it)."""
        best, best_rank, runner_up = None, (True, math.inf), math.inf
        estimate = self.backend.estimate
        keys, n = self.keys, len(self.keys)
        for i in range(n):
            key = keys[(self._next + i) % n]
            state = key.state
            if state == "disabled":
                continue
            full, ready = estimate(key.group.spec.id, cost, now)
            if state in ("cooling", "parked") and key.until > ready:
                ready = key.until
            rank = (full, ready)
            if rank < best_rank:
                if not best_rank[0]:
                    runner_up = best_rank[1]
                best, best_rank = key, rank
            elif not full and ready < runner_up:
                runner_up = ready
        return best, best_rank[1], best_rank[0], runner_up

    async def acquire(self, cost: Cost) -> Lease[K]:
        """Wait for the key that can send ``cost`` soonest, and its slot."""
        ledger = wait_ledger.get()
        if ledger is None:
            return await self._acquire(cost)
        ledger.since = started = self.clock.monotonic()
        try:
            return await self._acquire(cost)
        finally:
            ledger.total += self.clock.monotonic() - started
            ledger.since = None

    async def _acquire(self, cost: Cost) -> Lease[K]:
        if self._refresher is None and self.backend.shared:
            self._start_refresher()
        waited = False
        refused: tuple[K, float] | None = None  # a key whose day has not begun yet
        missed = 0  # reservations refused as later than another key could go
        attempts = 0  # calls in a row the backend did not answer
        try:
            while True:
                if self._closed.is_set():
                    raise Stopping("stopping")
                now = self.clock.time()
                key, at, full, runner_up = self._best(cost, now)
                if key is None:
                    reasons = "; ".join(f"{k.masked}: {k.reason}" for k in self.keys if k.reason)
                    raise NoUsableKey(f"no usable key left ({reasons or 'all disabled'})")
                if full:  # every usable key has all its requests in flight
                    waited = self._begin_wait(waited)
                    await self._wait_turn()
                    continue
                if refused is not None and refused[0] is key:
                    at = max(at, refused[1])
                if at - now > HORIZON or (refused is not None and refused[0] is key):
                    # Far ahead, or in a day not begun: look again then, reserving nothing.
                    if self.stop_when_out_of_quota and self._all_out_of_quota(now):
                        raise QuotaWait(at)
                    waited = self._begin_wait(waited)
                    await self._sleep(max(0.0, min(at - now, HORIZON)))
                    refused = None
                    continue
                # Not much later than the next best key could go: what this process knows
                # of a shared backend may be a refresh old, and another key (one that was
                # not cooling, say) may be the better choice.
                horizon = HORIZON
                if missed < len(self.keys):
                    horizon = min(HORIZON, max(runner_up, at) - now + REFRESH)
                group = key.group.spec.id
                try:
                    answer = await self.backend.reserve(
                        group, key.fingerprint, cost, horizon=horizon, now=self._now_arg(now)
                    )
                except MetersUnavailable as exc:
                    waited = self._begin_wait(waited)
                    attempts += 1
                    await self._wait_for_backend(exc, attempts)
                    continue
                attempts = 0
                self._tell_reachable()
                self._see(key, answer.key_state)
                reservation = answer.reservation
                if reservation is None:
                    if answer.refusal is Refusal.FULL:
                        waited = self._begin_wait(waited)
                        await self._wait_turn()
                    elif answer.refusal is Refusal.LATER:
                        if answer.at - answer.now > horizon:
                            missed += 1  # choose again, knowing better
                        else:  # a day not begun
                            refused = (key, now + answer.at - answer.now)
                    continue  # Refusal.KEY: the key is disabled now; choose again
                self._next = (self.keys.index(key) + 1) % len(self.keys)
                wait = reservation.at - answer.now
                if wait > 0:
                    waited = self._begin_wait(waited)
                    try:
                        await self._sleep(wait)
                    except (Stopping, asyncio.CancelledError):
                        self.backend.refund(reservation, cost)
                        raise
                    try:
                        answer = await self.backend.begin(
                            reservation, now=self._now_arg(self.clock.time())
                        )
                    except MetersUnavailable as exc:
                        self.backend.refund(reservation, cost)
                        attempts += 1
                        await self._wait_for_backend(exc, attempts)
                        continue
                    self._see(key, answer.key_state)
                    if answer.reservation is None:
                        continue  # the key went bad, or its slots were taken: choose again
                    reservation = answer.reservation
                key.requests += cost.requests
                key.tokens += cost.tokens
                flying = self._flying.get(group, 0) + 1
                self._flying[group] = flying
                return Lease(key, cost, self.clock.time(), reservation, cost, flying=flying)
        finally:
            if waited:
                self.waiting -= 1

    async def _wait_turn(self) -> None:
        """Wait until some key's in-flight slot is released (here, or elsewhere: polled)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        closed = asyncio.ensure_future(self._closed.wait())
        waiters: list[asyncio.Future[Any]] = [turn, closed]
        if self.backend.shared:
            waiters.append(asyncio.ensure_future(self.clock.sleep(SLOT_POLL)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if turn.done():
                self._wake_one()  # woken but gone: the next waiter gets the slot
            raise
        finally:
            for waiter in waiters[1:]:
                waiter.cancel()
            if not turn.done():
                turn.cancel()
        if self._closed.is_set():
            raise Stopping("stopping")

    def _wake_one(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                break

    def _begin_wait(self, waited: bool) -> bool:
        if not waited:
            self.waiting += 1
            self.waited += 1
        return True

    async def _wait_for_backend(self, exc: MetersUnavailable, attempt: int) -> None:
        """The backend is unreachable: say so once, and ask again after a pause that grows
        with this request's attempts (so it comes back about as soon as the backend)."""
        self._tell_unreachable(exc)
        await self._sleep(min(MAX_BACKOFF, 0.05 * 2 ** min(attempt - 1, 10)))

    def _tell_unreachable(self, exc: MetersUnavailable) -> None:
        if not self._unreachable:
            self._unreachable = True
            self.on_event(f"limiter: {exc}, waiting")

    def _tell_reachable(self) -> None:
        if self._unreachable:
            self._unreachable = False
            self.on_event("limiter: meters reachable again")

    def _window_out(self, key: K, now: float) -> bool:
        """A day's quota, or a fixed window, spent until well ahead."""
        view = self.backend.view(key.group.spec.id, now)
        far = now + HORIZON
        return any(day.exhausted and day.resets_at > far for day in view.today) or any(
            window.spent and window.resets_at > far for window in view.windows
        )

    def _all_out_of_quota(self, now: float) -> bool:
        usable = [k for k in self.keys if k.state != "disabled"]
        return bool(usable) and all(
            (k.state == "parked" and k.until > now + HORIZON) or self._window_out(k, now)
            for k in usable
        )

    def quota_wait(self, now: float) -> float | None:
        """When every usable key is out of quota: the earliest time one comes back."""
        if not self._all_out_of_quota(now):
            return None
        usable = [k for k in self.keys if k.state != "disabled"]
        return min(self._ready_at(k, Cost(), now) for k in usable)

    def release(self, lease: Lease[K]) -> None:
        """The request is over: free its concurrency slot."""
        if lease.released:
            return
        lease.released = True
        group = lease.key.group.spec.id
        self._flying[group] = max(0, self._flying.get(group, 0) - 1)
        reservation = lease.reservation
        if reservation is not None:
            if not lease.refunded:
                # An answer that said nothing of a fixed window (a transport error, no
                # headers): the provider may have counted the request, so it counts.
                for limit in self.backend.view(group, self.clock.time()).limits:
                    mid = meter_id(limit)
                    if limit.fixed and _metered_fixed(limit) and mid not in lease.reported:
                        self.backend.reconcile(reservation, mid, None, None)
            self.backend.release(reservation)
            if reservation.slot:
                self._wake_one()

    # -- learning ----------------------------------------------------------------------

    def settle(self, lease: Lease[K], feedback: Feedback) -> None:
        """Learn from the answer to a leased request."""
        key, now = lease.key, self.clock.time()
        group = key.group.spec.id
        used = _used(lease.held, feedback)
        if used != lease.held:
            key.tokens += used.tokens - lease.held.tokens
            if lease.reservation is not None and not lease.refunded:
                self.backend.settle(lease.reservation, lease.held, used)
            lease.held = used
        if feedback.ignored and key.fingerprint not in self._told_ignored:
            self._told_ignored.add(key.fingerprint)  # once per key, not once per answer
            self.on_event(f"key {key.masked}: {feedback.ignored}")
        verdict = feedback.verdict
        if verdict is Verdict.OK:
            key.consecutive_429 = 0
            if key.state == "cooling" and key.until <= now:
                self._set_state(key, KeyState("ready"))
            self.backend.recover(group, self._now_arg(now))
        elif verdict is Verdict.RATE_LIMITED:
            self.rejections += 1
            key.rate_limited += 1
            key.consecutive_429 += 1
            self._refund(lease)  # a refused request spends nothing
            # Without advice, wait a little longer after each 429 in a row.
            wait = 1.0 * 2 ** min(key.consecutive_429 - 1, 6)
            until = feedback.retry_at if feedback.retry_at is not None else now + wait
            self._set_state(key, KeyState("cooling", until))
            if feedback.scope in CONCURRENCY_SCOPES:
                # Too many at once (GitHub's secondary limits): fewer in flight, not slower.
                self.backend.throttle(group, lease.flying, self._now_arg(now))
            elif not self._at_known_edge(group, feedback.windows, now):
                # A limit lower than the meters know (or shared with someone else): slower.
                self.backend.slow_down(group, self._now_arg(now))
        elif verdict is Verdict.QUOTA_EXHAUSTED:
            key.rate_limited += 1
            self._refund(lease)
            until = feedback.retry_at if feedback.retry_at is not None else math.inf
            if feedback.scope in (None, "day"):  # an hour's quota leaves the day's alone
                for day in self.backend.view(group, now).today:
                    self.backend.exhaust(group, meter_id(day.limit), until)
            already = key.state in ("parked", "disabled") and key.until >= until
            self._set_state(key, KeyState("parked", until, feedback.reason or "quota exhausted"))
            if not already and key.state == "parked":  # once, not once per request in flight
                self.on_event(f"key {key.masked} parked: {key.reason}")
        elif verdict is Verdict.KEY_INVALID:
            key.errors += 1
            if key.state != "disabled":  # several answers may say so at once: tell once
                reason = feedback.reason or "rejected by the provider"
                self._set_state(key, KeyState("disabled", 0.0, reason))
                self.on_event(f"key {key.masked} disabled for this run: {key.reason}")
        self._learn(lease, feedback.windows, now)

    def _refund(self, lease: Lease[K]) -> None:
        if lease.reservation is not None and not lease.refunded:
            lease.refunded = True
            self.backend.refund(lease.reservation, lease.held)

    def _set_state(self, key: K, state: KeyState) -> None:
        """Change the key's state here and in the backend (for every worker)."""
        merged = _state(key).merge(state)
        key.state, key.until, key.reason = merged.state, merged.until, merged.reason
        self.backend.set_key_state(key.fingerprint, state)

    def _see(self, key: K, seen: KeyState) -> None:
        """The backend says the key is in state ``seen`` (perhaps another worker's doing)."""
        if seen.state == "ready" or seen == _state(key):
            return  # "ready" in the backend may just mean it has not heard yet
        before = key.state
        merged = _state(key).merge(seen)
        key.state, key.until, key.reason = merged.state, merged.until, merged.reason
        if key.state != before and key.state in ("parked", "disabled"):
            if key.state == "disabled":
                self.on_event(f"key {key.masked} disabled for this run: {key.reason}")
            else:
                self.on_event(f"key {key.masked} parked: {key.reason}")

    def _learn(self, lease: Lease[K], windows: Sequence[Window], now: float) -> None:
        key = lease.key
        group = key.group.spec.id
        limits: tuple[Limit, ...] | None = None
        # Anthropic's combined tokens window mirrors the tighter of its input and output
        # ones: where those are announced, they are metered, and it is not.
        split = any(w.name in ("input_tokens", "output_tokens") for w in windows)
        for window in windows:
            unit = _unit(window)
            if split and unit == "tokens":
                continue
            if limits is None:
                limits = self.backend.view(group, now).limits
            matching = [lim for lim in limits if lim.unit == unit and _same_window(lim, window)]
            if window.limit and window.period and not matching:
                # (A fixed token window is a log the reset exhausts, not paced; a day is a
                # counter either way.)
                kind = window.fixed if window.period < 86_400 else None
                limit = Limit(window.limit, window.period, unit, fixed=kind)
                self.backend.learn(group, limit, self._seed(lease, window, limit))
                limits = None  # the next window sees the new meter
                matching = [limit]
                if limit.describe() not in self._told:  # once per limit, not once per key
                    self._told.add(limit.describe())
                    self.on_event(f"key {key.masked}: learned limit {limit.describe()}")
            for lim in matching:
                # (Fixed windows are metered so for requests within a day; daily quotas
                # are counters, token windows logs, which the reset exhausts.)
                kind = lim.fixed
                if window.fixed and kind is None and _metered_fixed(lim):
                    # Configured without saying which: the provider says it is fixed.
                    kind = True
                    self.backend.learn(group, Limit(lim.count, lim.seconds, unit, fixed=True))
                    limits = None
                fixed = bool(kind) and _metered_fixed(lim)
                if window.limit and window.limit < lim.count:
                    # Configured higher than the provider allows: believe the provider.
                    lowered = Limit(window.limit, lim.seconds, lim.unit, fixed=kind)
                    self.backend.learn(group, lowered)
                    limits = None
                    self.on_event(f"key {key.masked}: limit lowered to {lowered.describe()}")
                if fixed and window.remaining is not None and lease.reservation is not None:
                    mid = meter_id(lim)
                    self.backend.reconcile(
                        lease.reservation,
                        mid,
                        window.remaining,
                        window.reset_at,
                        window.reset_slack,
                    )
                    lease.reported |= {mid}
            spent = window.remaining == 0 and window.reset_at is not None
            if spent and window.reset_at is not None and window.reset_at > now:
                smooth = [
                    lim
                    for lim in matching
                    if not (_metered_fixed(lim) and (lim.fixed or window.fixed))
                ]
                for lim in smooth:
                    # A window said to be smooth (OpenAI's, Anthropic's) announces when it
                    # is full again, not when it takes the next request.
                    until = _next_room(lim, window, now) if window.fixed is False else None
                    self.backend.exhaust(group, meter_id(lim), until or window.reset_at)
                if not matching:
                    self._set_state(key, KeyState("cooling", window.reset_at))

    def _at_known_edge(self, group: str, windows: Sequence[Window], now: float) -> bool:
        """Whether a 429 comes from a window the meters know at the provider's count, just
        spent (a request at the window's very edge): the limit is right, nothing to slow."""
        spent = [w for w in windows if w.remaining == 0 and w.limit]
        if not spent:
            return False
        limits = self.backend.view(group, now).limits
        return all(
            any(
                lim.unit == _unit(w) and lim.count <= (w.limit or 0) and _same_window(lim, w)
                for lim in limits
            )
            for w in spent
        )

    def _seed(self, lease: Lease[K], window: Window, limit: Limit) -> float:
        """What a window learned now has spent already: what the provider counted, and
        (requests) this process's others in flight that it may not have seen yet."""
        if limit.fixed and _metered_fixed(limit):
            return 0.0  # what is left is reconciled from the answer itself
        if window.remaining == 0 and window.reset_at is not None:
            return 0.0  # spent: the reset it announces holds the meter (exhaust)
        counted = float(limit.count - window.remaining) if window.remaining is not None else 0.0
        if window.reset_at is not None and not window.fixed:
            # No more than the provider refills by its reset: a sliding window's reset (when
            # its newest request leaves) says little of how much of it is spent. (A fixed
            # window's reset is its end: it refills nothing before.)
            refill = (window.reset_at - self.clock.time()) * limit.count / limit.seconds
            counted = min(counted, max(0.0, refill))
        others = self._flying.get(lease.key.group.spec.id, 1) - 1
        return max(0.0, counted) + (others if limit.unit == "requests" else 0)

    # -- what is known, for display and the store --------------------------------------

    def view(self, group: str, now: float | None = None) -> GroupView:
        """The group's limits in force, today's usage and slots taken (a pure read)."""
        return self.backend.view(group, self.clock.time() if now is None else now)

    def day_usage(self, now: float) -> list[tuple[str, float, str, float]]:
        """``(group, day_start, unit, used)`` for every daily meter, to persist in the store.

        ``group`` is the fingerprint of the key that names the group.
        """
        return [
            (spec.id, day.day_start, day.limit.unit, day.used)
            for spec in self.groups()
            for day in self.backend.view(spec.id, now).today
        ]

    def restore_day(self, group: str, day_start: float, unit: str, used: float) -> None:
        """The store says ``used`` of ``unit`` were spent on ``group`` in the day starting
        ``day_start``: the meter keeps the larger of that and its own count."""
        self.backend.restore_day(group, day_start, unit, used)


def _metered_fixed(limit: Limit) -> bool:
    """Whether a fixed window of this limit is metered as one (requests, within a day)."""
    return limit.unit == "requests" and not limit.daily


def _unit(window: Window) -> Unit:
    if window.name == "input_tokens":
        return "input_tokens"
    if window.name == "output_tokens":
        return "output_tokens"
    return window.unit


def _used(held: Cost, feedback: Feedback) -> Cost:
    """What the request used, as far as the answer says (``held`` where it says nothing)."""
    total, inputs, outputs = feedback.tokens_used, feedback.input_used, feedback.output_used
    if total is None and inputs is None and outputs is None:
        return held
    if feedback.charged_up_front and total is not None:
        total = max(total, held.tokens)  # what the provider counted: the reservation's cap
    if inputs is None and outputs is None:
        return Cost(held.requests, total or 0)
    tokens = total if total is not None else (inputs or 0) + (outputs or 0)
    return Cost(
        held.requests,
        tokens,
        inputs if inputs is not None else held.input_tokens,
        outputs if outputs is not None else held.output_tokens,
    )


def _next_room(limit: Limit, window: Window, now: float) -> float:
    """When a smooth window announced as spent takes the next request.

    Its reset (OpenAI's ``x-ratelimit-reset-*``, Anthropic's) is when it is back to *full*,
    up to a whole window away; but a rolling or refilling window takes the next request
    as soon as one unit frees: for requests, one interval of the rate. Tokens free as
    they refill; a tenth of the window is a fair wait for the next request's share. A
    429, if it comes, cools the key for its own ``retry-after``.
    """
    assert window.reset_at is not None
    step = limit.seconds / limit.count if limit.unit == "requests" else limit.seconds / 10
    return min(window.reset_at, now + step)


def _same_window(limit: Limit, window: Window) -> bool:
    if window.period is None:  # which window is it? Only the one with that very count.
        return window.limit is not None and window.limit == limit.count
    if abs(limit.seconds - window.period) <= 0.1 * max(limit.seconds, window.period):
        return True
    # The same count is the same window read again: a smooth window's length is worked
    # out from each answer, and readings differ (never a second limit for each). Only a
    # window of another order (a day, not a minute) is another limit.
    longer, shorter = max(limit.seconds, window.period), min(limit.seconds, window.period)
    return window.limit == limit.count and longer < 10 * shorter
