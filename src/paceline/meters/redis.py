"""The Redis meter backend: every worker's meters in one Redis, so all share each key's quota.

Each call of :class:`~paceline.meters.protocol.MeterBackend` is a Lua script (``lua/``),
atomic in Redis and timed by Redis's clock (``TIME``), so workers on machines whose clocks
differ still space their requests on one clock. A request costs one round trip to reserve
(which also takes the concurrency slot when it goes at once); what only tells (settle,
release, refund, key states, limits) is applied to this process's view at once and sent in
order in the background, in one pipeline, or ahead of the next reservation in its round
trip. Every second the limiter reads each group back (key states, limits, today's usage),
and keeps this process's in-flight slots alive: a dead worker's slots expire.

Meters restart conservatively when Redis lost its state (a restart without persistence):
a group this process had seen is registered again from the configured limits as if every
window had been spent at the full rate up to then (GCRA without its initial burst, token
windows full), and this process sends again what it knew (learned and lowered limits, key
states, today's counts: the store's are restored by the engine). When Redis cannot be
reached, calls raise :class:`~paceline.errors.MetersUnavailable`: the limiter waits and
tries again; nothing falls back to meters that other workers cannot see.

Keys are ``<prefix>g:<group>`` (a hash, with ``:tb:<meter>`` token buckets, ``:slots``
and ``:fly``, the requests in flight for fixed windows) and ``<prefix>k:<key
fingerprint>``: fingerprints, never secrets. A standalone Redis (or
one behind Sentinel) is expected: the scripts name the keys of a group themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import itertools
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from paceline.clock import SYSTEM_CLOCK, Clock
from paceline.errors import ConfigError, MetersUnavailable
from paceline.limits import Cost, Limit, Unit, day_start, default_burst, next_day_start, zone

from .protocol import (
    CAP_CUT,
    CAP_RECOVERY,
    MIN_FACTOR,
    RECOVERY,
    SLOWDOWN,
    THROTTLE_HOLD,
    Answer,
    DayUsage,
    GroupSpec,
    GroupView,
    KeyState,
    Refusal,
    Reservation,
    WindowUsage,
    meter_id,
    reset_edge,
)

__all__ = ["DEFAULT_PREFIX", "RedisBackend"]

DEFAULT_PREFIX = "paceline:"
#: How long an in-flight slot lives without this process renewing it (every second).
SLOT_TTL = 30.0
#: How long a key disabled (or parked for the run) stays so in Redis: long enough for any
#: run, short enough that a key fixed by its owner comes back by itself.
FINAL_TTL = 24 * 3600
#: A group found full is taken as full for this long before asking again.
FULL_FOR = 0.05
#: Slowed meters recover linearly in time: telling Redis once a second is enough.
RECOVER_EVERY = 1.0
#: The longest pause between two attempts to send what is queued.
MAX_BACKOFF = 2.0

_READY = KeyState()
_Call = tuple[AsyncScript, list[str], list[Any]]


def _script(name: str) -> str:
    lua = resources.files("paceline.meters") / "lua"
    return (lua / "lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) and x > 0 else f"{x:.6f}"


def _float(text: str, default: float = -math.inf) -> float:
    return float(text) if text else default


_UNITS: dict[str, Unit] = {
    "c": "concurrent",
    "t": "tokens",
    "i": "input_tokens",
    "o": "output_tokens",
}
_MODES: dict[bool | None, str] = {None: "", True: "f", False: "s"}
_FIXED: dict[str, bool | None] = {"": None, "f": True, "s": False}


def _costs(cost: Cost) -> list[int]:
    """A cost's tokens as the scripts read them: all, input, output."""
    return [cost.tokens, cost.input, cost.output]


@dataclass(slots=True)
class _Meter:
    limit: Limit
    burst: int
    order: int
    learned: bool = False
    factor: float = 1.0

    @property
    def rank(self) -> tuple[int, int]:  # windows, then days, then concurrency
        kind = 2 if self.limit.unit == "concurrent" else 1 if self.limit.daily else 0
        return kind, self.order


@dataclass(slots=True)
class _Day:
    used: float
    start: float
    end: float


@dataclass(slots=True)
class _Group:
    """This process's view of a group in Redis, from the last answers and refreshes."""

    spec: GroupSpec
    tz: dt.tzinfo
    key: str
    arg: str  # the configured meters, as the scripts read them
    name: str  # and a name for them
    meters: dict[str, _Meter]
    version: str = ""
    epoch: str = ""  # the incarnation last seen: if it changes, Redis lost the group
    next_at: float = -math.inf
    full_until: float = -math.inf
    in_flight: int = 0
    days: dict[str, _Day] = field(default_factory=dict)
    slots: set[str] = field(default_factory=set)
    recovered_at: float = -math.inf
    midnights: tuple[float, float, str] = (math.inf, -math.inf, "")
    # fixed windows as last read: meter -> (left, end, when usable again, of what is not
    # left how much requests in flight hold back)
    fixed: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    tracked: set[str] = field(default_factory=set)  # in flight for the fixed windows
    throttled_at: float = -math.inf  # when this process last told of a concurrency limit


def _configured(spec: GroupSpec) -> dict[str, _Meter]:
    meters: dict[str, _Meter] = {}
    for order, limit in enumerate(spec.limits):
        mid = meter_id(limit)
        if mid in meters and meters[mid].limit.count <= limit.count:
            continue  # two limits of one window: the lower one holds
        burst = 0 if limit.unit == "concurrent" else default_burst(limit)
        meters[mid] = _Meter(limit, burst, order)
    return meters


def _mode(limit: Limit) -> str:
    return _MODES[limit.fixed]


class RedisBackend:
    """Meters in Redis, shared by every process that uses the same Redis and prefix.

    >>> backend = RedisBackend.from_url("redis://127.0.0.1:6379/0")     # doctest: +SKIP
    >>> pool.bind(clock, note, backend=backend)                         # doctest: +SKIP
    >>> await pool.limiter.start()                                      # doctest: +SKIP
    """

    shared = True

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str | None = None,
        clock: Clock | None = None,
        slot_ttl: float = SLOT_TTL,
    ) -> None:
        self._redis = client
        self.prefix = DEFAULT_PREFIX if prefix is None else prefix
        self._clock = clock
        self.slot_ttl = slot_ttl
        self._scripts = {
            name: client.register_script(_script(name))
            for name in ("reserve", "begin", "settle", "key_state", "limits", "read")
        }
        self._groups: dict[str, _Group] = {}
        self._states: dict[str, KeyState] = {}
        self._pending: list[_Call] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Future[list[Any]]] = set()
        self._ids = itertools.count(1)
        self._process = secrets.token_hex(4)
        self.round_trips = 0  # for measurements: pipelines sent to Redis

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str | None = None, clock: Clock | None = None
    ) -> RedisBackend:
        """A backend on the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``)."""
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            # Once at once (a pooled connection Redis closed), never after a timeout: a
            # reservation sent twice would be taken twice. The limiter retries the rest.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        # An unknown option in the URL fails here, not on every request of the run.
        client.connection_pool.make_connection()  # type: ignore[no-untyped-call]  # redis-py
        return cls(client, prefix=prefix, clock=clock)

    @property
    def server_clock(self) -> bool:
        return self._clock is None

    def _local_now(self, now: float | None) -> float:
        if now is not None:
            return now
        return (self._clock or SYSTEM_CLOCK).time()

    def _now_arg(self, now: float | None) -> str:
        if now is None and self._clock is not None:
            now = self._clock.time()
        return "" if now is None else _fmt(now)

    def _key(self, fingerprint: str) -> str:
        return f"{self.prefix}k:{fingerprint}"

    # -- the run -----------------------------------------------------------------------

    def attach(self, groups: Sequence[GroupSpec]) -> None:
        for spec in groups:
            if spec.id in self._groups:
                continue
            meters = _configured(spec)
            arg = ";".join(
                f"{mid}|{m.limit.count}|{m.limit.seconds!r}|{m.burst}|{m.order}|{_mode(m.limit)}"
                for mid, m in meters.items()
            )
            key = f"{self.prefix}g:{spec.id}"
            name = hashlib.sha1(arg.encode()).hexdigest()[:12]
            self._groups[spec.id] = _Group(spec, zone(spec.tz), key, arg, name, meters)

    async def start(self) -> None:
        # A Redis that answers but refuses us (no such database, a wrong password) is a
        # mistake in the URL: said at once. One that does not answer yet is waited for.
        try:
            await self._redis.ping()
        except (AuthenticationError, ResponseError) as exc:
            raise ConfigError(f"limiter: Redis refused: {str(exc).splitlines()[0]}") from None
        except (RedisConnectionError, RedisTimeoutError, OSError):
            pass
        self._ensure_flusher()

    async def aclose(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        if self._pending:
            calls, self._pending = self._pending, []
            with contextlib.suppress(MetersUnavailable):
                await self._run(calls)
        if self._inflight:  # round trips whose callers went away: let them land
            await asyncio.wait(self._inflight, timeout=5.0)
        await self._redis.aclose()

    # -- talking to Redis --------------------------------------------------------------

    async def _run(self, calls: Sequence[_Call]) -> list[Any]:
        """Send ``calls`` in one pipeline (one round trip).

        The round trip runs in a task of its own: redis-py's asyncio client can swallow a
        cancellation that arrives during a command (redis/redis-py#2028, #2551), and a
        caller cancelled here must see :class:`asyncio.CancelledError` at once. The calls
        still go through: what was sent is not lost.
        """
        inner = asyncio.ensure_future(self._run_now(calls))
        self._inflight.add(inner)
        inner.add_done_callback(self._inflight.discard)
        inner.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(inner)

    async def _run_now(self, calls: Sequence[_Call]) -> list[Any]:
        """Scripts Redis forgot (a restart) are loaded again and those calls sent again."""
        try:
            results = await self._pipeline(calls)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                    script.sha = await self._redis.script_load(script.script)
                again = await self._pipeline([calls[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise MetersUnavailable("Redis unreachable") from exc
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipeline(self, calls: Sequence[_Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        self.round_trips += 1
        return list(await pipe.execute(raise_on_error=False))

    async def _send(self, call: _Call) -> Any:
        """One call, with whatever is queued in front of it, in one round trip."""
        calls, self._pending = self._pending, []
        try:
            results = await self._run([*calls, call])
        except MetersUnavailable:
            self._pending[:0] = calls
            raise
        return results[-1]

    def _tell(self, script: str, keys: list[str], args: list[Any]) -> None:
        """Queue a call that needs no answer; sent soon, in order."""
        self._pending.append((self._scripts[script], keys, args))
        self._ensure_flusher()
        self._wake.set()

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            try:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
            except RuntimeError:  # no event loop: the next reservation takes them along
                self._flusher = None

    async def _flush_forever(self) -> None:
        backoff = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            calls, self._pending = self._pending, []
            try:
                await self._run(calls)
            except MetersUnavailable:
                self._pending[:0] = calls
                backoff = min(MAX_BACKOFF, max(0.05, backoff * 2))
                await (self._clock or SYSTEM_CLOCK).sleep(backoff)
                self._wake.set()
            else:
                backoff = 0.0

    def _midnights(self, g: _Group, now: float) -> str:
        """This and the next midnights in the group's time zone, for the day meters."""
        start, end, text = g.midnights
        if not start <= now < end:
            days = [day_start(now, g.tz)]
            for _ in range(8):
                days.append(next_day_start(days[-1], g.tz))
            text = ",".join(_fmt(d) for d in days)
            g.midnights = (days[0], days[1], text)
        return text

    def _head(self, g: _Group, now: float | None) -> list[Any]:
        """The arguments every registering script starts with."""
        return [
            self._now_arg(now),
            g.arg,
            g.epoch,
            f"{self._process}-{next(self._ids)}",
            "" if math.isinf(g.next_at) else _fmt(g.next_at),
        ]

    # -- what Redis answers ------------------------------------------------------------

    def _absorb(self, g: _Group, view: Sequence[str], now: float) -> None:
        version, spec, days, flying, next_at, windows = view
        if spec or (version and version != g.version):  # (no meters left: an empty spec)
            meters: dict[str, _Meter] = {}
            for item in spec.split(";") if spec else ():
                mid, count, seconds, burst, order, learned, factor, mode = item.split("|")
                unit = _UNITS.get(mid[0], "requests")
                limit = Limit(
                    int(float(count)),
                    float(seconds) if unit != "concurrent" else 0.0,
                    unit,
                    fixed=_FIXED.get(mode),
                )
                meters[mid] = _Meter(
                    limit, int(float(burst)), int(float(order)), learned == "1", float(factor)
                )
            g.meters = meters
            g.version = version
        for item in days.split(";") if days else ():
            mid, used, start, end = item.split("|")
            g.days[mid] = _Day(float(used), _float(start), _float(end))
        g.fixed = {}
        for item in windows.split(";") if windows else ():
            mid, left, end, reset, flying = item.split("|")
            g.fixed[mid] = (float(left), _float(end), _float(reset, math.inf), float(flying))
        g.in_flight = int(flying)
        g.next_at = float(next_at)
        conc = g.meters.get("c")
        full = conc is not None and g.in_flight >= conc.limit.count
        g.full_until = now + FULL_FOR if full else -math.inf

    def _see_state(self, key: str, state: str, until: str, reason: str) -> KeyState:
        seen = KeyState(state, _float(until, 0.0), reason or None)
        if seen.state != "ready":
            self._states[key] = self._states.get(key, _READY).merge(seen)
        return seen

    def _reseed(
        self,
        g: _Group,
        meters: dict[str, _Meter],
        days: dict[str, _Day],
        fixed: dict[str, tuple[float, float, float, float]],
    ) -> None:
        """Redis lost the group and registered it again: send what this process knew."""
        configured = _configured(g.spec)
        for mid, meter in meters.items():
            base = configured.get(mid)
            if base is None or meter.limit.count < base.limit.count:
                self.learn(g.spec.id, meter.limit)
        for mid, day in days.items():
            known = meters.get(mid)
            if known is not None and day.used > 0:
                self.restore_day(g.spec.id, day.start, known.limit.unit, day.used)
        for fingerprint in g.spec.keys:
            state = self._states.get(fingerprint)
            if state is not None and state.state != "ready":
                self._tell_state(fingerprint, state, None)
        now = self._local_now(None)
        for mid, (left, _end, reset, _flying) in fixed.items():
            if left < 1 and now < reset < math.inf:  # spent until its reset: still spent
                self._limits(g, None, "exhaust", mid, _fmt(reset))

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
        g = self._groups[group]
        local_now = self._local_now(now)
        head = self._head(g, now)
        rid = head[3]
        args = [
            *head,
            _fmt(horizon),
            cost.requests,
            cost.tokens,
            int(take_slot),
            _fmt(self.slot_ttl),
            self._midnights(g, local_now),
            g.version,
            g.name,
            cost.input,
            cost.output,
        ]
        try:
            reply = await self._send((self._scripts["reserve"], [g.key, self._key(key)], args))
        except asyncio.CancelledError:
            # It may have been taken: free the slot (a slot taken twice would outlive us).
            self._release_call(g, rid, True)
            raise
        status, at, backend_now, slot, epoch, reinit, state, until, reason, mids = reply[:10]
        meters, days, fixed = dict(g.meters), dict(g.days), dict(g.fixed)
        g.epoch = epoch
        self._absorb(g, reply[10:16], local_now)
        if reinit == "1":
            self._reseed(g, meters, days, fixed)
        seen = self._see_state(key, state, until, reason)
        answered = float(backend_now)
        if status == "ok":
            reservation = Reservation(
                rid,
                group,
                key,
                float(at),
                cost,
                tuple(mids.split(",")) if mids else (),
                slot == "1",
                epoch,
                tracked=True,
            )
            if reservation.slot:
                g.slots.add(rid)
            g.tracked.add(rid)
            return Answer(answered, float(at), reservation, None, seen)
        if status == "full":
            g.full_until = local_now + FULL_FOR
            return Answer(answered, answered, None, Refusal.FULL, seen)
        if status == "later":
            return Answer(answered, float(at), None, Refusal.LATER, seen)
        return Answer(answered, answered, None, Refusal.KEY, seen)

    async def begin(self, reservation: Reservation, *, now: float | None = None) -> Answer:
        g = self._groups[reservation.group]
        state = self._states.get(reservation.key, _READY)
        if "c" not in g.meters or reservation.slot:
            # No slot to take: the key's state as last known is enough (no round trip).
            local_now = self._local_now(now)
            if state.blocks(local_now):
                self.refund(reservation, reservation.cost)
                return Answer(local_now, local_now, None, Refusal.KEY, state)
            return Answer(local_now, reservation.at, reservation, None, state)
        r = reservation
        args = [
            *self._head(g, now),
            r.id,
            r.epoch,
            _fmt(r.at),
            r.cost.requests,
            r.cost.tokens,
            ",".join(r.meters),
            _fmt(self.slot_ttl),
            r.cost.input,
            r.cost.output,
        ]
        try:
            reply = await self._send((self._scripts["begin"], [g.key, self._key(r.key)], args))
        except asyncio.CancelledError:
            self._release_call(g, r.id, r.tracked)
            raise
        status, backend_now, slot, st, until, reason = reply
        seen = self._see_state(r.key, st, until, reason)
        answered = float(backend_now)
        if status == "ok":
            taken = dataclasses.replace(r, slot=slot == "1")
            if taken.slot:
                g.slots.add(r.id)
            return Answer(answered, r.at, taken, None, seen)
        g.tracked.discard(r.id)
        if status == "full":
            g.full_until = self._local_now(now) + FULL_FOR
            return Answer(answered, answered, None, Refusal.FULL, seen)
        return Answer(answered, answered, None, Refusal.KEY, seen)

    def estimate(self, group: str, cost: Cost, now: float) -> tuple[bool, float]:
        g = self._groups[group]
        at = max(now, g.next_at)
        for mid, day in g.days.items():
            meter = g.meters.get(mid)
            if meter is None or now >= day.end or day.used <= 0:
                continue
            if day.used + cost.units(meter.limit.unit) > meter.limit.count:
                at = max(at, day.end)
        for left, _end, reset, flying in g.fixed.values():
            if left + flying < cost.requests and now < reset < math.inf:
                at = max(at, reset)  # (held back by requests in flight: Redis decides)
        return now < g.full_until, at

    # -- settling ----------------------------------------------------------------------

    def _release_call(self, g: _Group, rid: str, tracked: bool) -> None:
        g.tracked.discard(rid)
        args = ["", 0, 0, 0, 0, 0, 0, 0, 0, "", rid, 1, int(tracked)]
        self._tell("settle", [g.key], args)

    def release(self, reservation: Reservation) -> None:
        if not (reservation.slot or reservation.tracked):
            return
        g = self._groups[reservation.group]
        if reservation.slot:
            g.slots.discard(reservation.id)
            g.in_flight = max(0, g.in_flight - 1)
            g.full_until = -math.inf
        self._release_call(g, reservation.id, reservation.tracked)

    def _adjust(self, r: Reservation, requests: float, change: list[int], held: Cost) -> None:
        g = self._groups[r.group]
        args = [r.epoch, _fmt(r.at), requests, *change, *_costs(held), ",".join(r.meters)]
        self._tell("settle", [g.key], [*args, r.id, 0, 0])

    def settle(self, reservation: Reservation, held: Cost, used: Cost) -> None:
        change = [u - h for u, h in zip(_costs(used), _costs(held), strict=True)]
        if any(change):
            self._adjust(reservation, 0, change, held)

    def refund(self, reservation: Reservation, held: Cost) -> None:
        g = self._groups[reservation.group]
        if reservation.tracked:
            g.tracked.discard(reservation.id)
        change = [-x for x in _costs(held)]
        args = [reservation.epoch, _fmt(reservation.at), -reservation.cost.requests, *change]
        args += [*_costs(held), ",".join(reservation.meters), reservation.id, 0]
        self._tell("settle", [g.key], [*args, int(reservation.tracked)])

    # -- what answers teach ------------------------------------------------------------

    def key_state(self, key: str) -> KeyState:
        return self._states.get(key, _READY)

    def set_key_state(self, key: str, state: KeyState) -> None:
        self._states[key] = self._states.get(key, _READY).merge(state)
        if state.state != "ready":  # a cooling that ended has expired in Redis already
            self._tell_state(key, state, None)

    def _tell_state(self, key: str, state: KeyState, now: float | None) -> None:
        args = [self._now_arg(now), state.state, _fmt(state.until), state.reason or "", FINAL_TTL]
        self._tell("key_state", [self._key(key)], args)

    def _limits(self, g: _Group, now: float | None, op: str, *args: Any) -> None:
        midnights = self._midnights(g, self._local_now(now))
        self._tell("limits", [g.key], [*self._head(g, now), midnights, op, *args])

    def learn(self, group: str, limit: Limit, used: float = 0.0) -> None:
        g = self._groups[group]
        mid = meter_id(limit)
        meter = g.meters.get(mid)
        burst = 0 if limit.unit == "concurrent" else default_burst(limit)
        if meter is None:
            order = 1000 + sum(m.learned for m in g.meters.values())
            g.meters[mid] = _Meter(limit, burst, order, learned=True)
        else:
            fixed = meter.limit.fixed
            if limit.fixed and fixed is None:
                fixed = True
            count = min(limit.count, meter.limit.count)
            meter.limit = Limit(count, meter.limit.seconds, meter.limit.unit, fixed=fixed)
            meter.burst = max(1, min(meter.burst, burst)) if burst else 0
        args = [mid, limit.count, repr(limit.seconds), burst, _mode(limit), _fmt(used)]
        self._limits(g, None, "learn", *args)

    def reconcile(
        self,
        reservation: Reservation,
        meter: str,
        remaining: int | None,
        reset_at: float | None,
        slack: float = 0.0,
    ) -> None:
        g = self._groups[reservation.group]
        m = g.meters.get(meter)
        if m is None or not m.limit.fixed:
            return
        reset = "" if reset_at is None else _fmt(reset_at)
        said = "" if remaining is None else remaining
        self._limits(g, None, "reconcile", meter, said, reset, _fmt(slack))
        # What this process will estimate from until Redis answers again.
        known = g.fixed.get(meter)
        if remaining is None or reset_at is None:
            return
        if known is None or reset_at > known[1] + 1.5:
            g.fixed[meter] = (float(remaining), reset_at, reset_at + reset_edge(slack), 0.0)

    def throttle(self, group: str, in_flight: int, now: float | None = None) -> None:
        g = self._groups[group]
        in_flight = max(in_flight, g.in_flight)
        local_now = self._local_now(now)
        # This process's view until Redis answers (limits.lua decides, by the same rules).
        level = max(1, in_flight - 1)
        conc = g.meters.get("c")
        if local_now - g.throttled_at < THROTTLE_HOLD and conc is not None:
            cap = min(conc.limit.count, level)  # the same burst answered: no new cut
        else:
            cap = max(1, math.floor(CAP_CUT * level))
            g.throttled_at = local_now
        if conc is None:
            order = 1000 + sum(m.learned for m in g.meters.values())
            g.meters["c"] = _Meter(Limit(cap, 0.0, "concurrent"), 0, order, learned=True)
        elif cap < conc.limit.count:
            conc.limit, conc.learned = Limit(cap, 0.0, "concurrent"), True
        g.recovered_at = local_now
        args = [in_flight, CAP_CUT, THROTTLE_HOLD, CAP_RECOVERY, RECOVERY]
        self._limits(g, now, "throttle", *args)

    def exhaust(self, group: str, meter: str, until: float) -> None:
        g = self._groups[group]
        m = g.meters.get(meter)
        day = g.days.get(meter)
        if m is not None and m.limit.daily:
            if day is not None:
                day.used = float(m.limit.count)
                if not math.isinf(until):
                    day.end = max(day.end, until)
        elif not math.isinf(until):
            g.next_at = max(g.next_at, until)
        self._limits(g, None, "exhaust", meter, _fmt(until))

    def slow_down(self, group: str, now: float | None = None) -> None:
        g = self._groups[group]
        for m in g.meters.values():
            if m.limit.unit == "requests" and not m.limit.daily:
                m.factor = max(MIN_FACTOR, m.factor * SLOWDOWN)
        g.recovered_at = self._local_now(now)
        self._limits(g, now, "slow", SLOWDOWN, MIN_FACTOR)

    def recover(self, group: str, now: float | None = None) -> None:
        g = self._groups[group]
        conc = g.meters.get("c")
        capped = conc is not None and conc.learned
        if not capped and all(m.factor >= 1.0 for m in g.meters.values()):
            return
        local_now = self._local_now(now)
        if local_now - g.recovered_at < RECOVER_EVERY:
            return  # recovery is linear in time: once a second says as much
        g.recovered_at = local_now
        self._limits(g, now, "recover", MIN_FACTOR, RECOVERY, CAP_RECOVERY, RECOVERY)

    # -- daily usage and display -------------------------------------------------------

    def restore_day(self, group: str, day_start: float, unit: str, used: float) -> None:
        g = self._groups[group]
        for mid, m in g.meters.items():
            if m.limit.daily and m.limit.unit == unit:
                day = g.days.get(mid)
                if day is None or day.start < day_start:
                    g.days[mid] = _Day(used, day_start, self._day_end(g, m.limit, day_start))
                elif abs(day.start - day_start) < 1e-3:
                    day.used = max(day.used, used)
        self._limits(g, None, "restore", unit[0], _fmt(day_start), used)

    def _day_end(self, g: _Group, limit: Limit, start: float) -> float:
        end = start
        for _ in range(max(1, round(limit.seconds / 86400))):
            end = next_day_start(end, g.tz)
        return end

    def view(self, group: str, now: float) -> GroupView:
        g = self._groups[group]
        meters = sorted(g.meters.items(), key=lambda item: item[1].rank)
        today = []
        for mid, m in meters:
            if not m.limit.daily:
                continue
            day = g.days.get(mid)
            if day is None or now >= day.end:
                start = day_start(now, g.tz)
                today.append(DayUsage(m.limit, start, self._day_end(g, m.limit, start), 0.0))
            else:
                today.append(DayUsage(m.limit, day.start, day.end, day.used))
        factors = [m.factor for m in g.meters.values() if m.limit.unit == "requests"]
        windows = []
        for mid, m in meters:
            if mid in g.fixed:
                left, _end, reset, _flying = g.fixed[mid]
                if now >= reset:
                    left, reset = float(m.limit.count), -math.inf
                shown = reset if reset < math.inf else -math.inf
                windows.append(WindowUsage(m.limit, max(0.0, left), shown))
        return GroupView(
            group,
            tuple(m.limit for _, m in meters),
            tuple(m.limit for _, m in meters if m.learned),
            tuple(today),
            g.in_flight,
            min(factors, default=1.0),
            tuple(windows),
        )

    async def refresh(self) -> None:
        groups = list(self._groups.values())
        calls: list[_Call] = [
            (
                self._scripts["read"],
                [g.key, *(self._key(k) for k in g.spec.keys)],
                [self._now_arg(None), g.version, _fmt(self.slot_ttl), *sorted(g.slots | g.tracked)],
            )
            for g in groups
        ]
        pending, self._pending = self._pending, []
        try:
            results = await self._run([*pending, *calls])
        except MetersUnavailable:
            self._pending[:0] = pending
            raise
        now = self._local_now(None)
        for g, reply in zip(groups, results[len(pending) :], strict=True):
            if reply[0] == "1":  # (its epoch is taken up by the next reservation)
                self._absorb(g, reply[2:8], now)
            states = reply[8:]
            for i, fingerprint in enumerate(g.spec.keys):
                state, until, reason = states[3 * i : 3 * i + 3]
                self._see_state(fingerprint, state, until, reason)
