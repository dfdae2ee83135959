"""API keys: loaded from the environment, shown masked, stored by fingerprint.

A :class:`KeyPool` holds the keys a job may use, their limits, and how each travels (a
bearer token, GitHub's ``token`` scheme, a named header, a query parameter). Requests get
a key and a slot from the pool's :class:`~paceline.limiter.Limiter`.

>>> pool = KeyPool(["sk-live-0123456789abcdef"], rpm=500, tpm=200_000)
>>> pool.keys[0].masked
'…cdef'
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigError, NoUsableKey
from .feedback import Feedback
from .limiter import Lease, Limiter
from .limits import Cost, Limit, parse_limit, zone
from .meters.local import LocalBackend, LocalGroup
from .meters.protocol import GroupSpec, MeterBackend

__all__ = ["Cost", "Key", "KeyPool", "NoUsableKey"]


#: The folder of the job file being loaded (set by the loader): a relative ``.env`` is
#: read beside the job file too, wherever the command runs from.
job_folder: ContextVar[Path | None] = ContextVar("job_folder", default=None)


def fingerprint(secret: str) -> str:
    """How a key is named in the store and in Redis: never the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class Key:
    """One API key. ``repr`` and ``str`` never show the secret.

    ``state`` is ``ready``, ``cooling`` (after a 429, until ``until``), ``parked`` (its
    quota is spent until ``until``) or ``disabled`` (rejected by the provider), as this
    process knows it (with a shared meter backend, what any worker saw). ``group`` holds
    the in-process meters of the key's group; the limits in force are read through
    ``pool.limiter.view(group_id)``, whichever backend meters them.
    """

    __slots__ = (
        "_secret",
        "auth",
        "consecutive_429",
        "errors",
        "fingerprint",
        "group",
        "masked",
        "rate_limited",
        "reason",
        "requests",
        "state",
        "tokens",
        "until",
    )

    def __init__(
        self, secret: str, *, auth: str = "bearer", group: LocalGroup | None = None
    ) -> None:
        self._secret = secret
        self.fingerprint = fingerprint(secret)
        # Long keys show their last four characters, as providers' dashboards do; a short
        # key would be half given away by that, so it shows a piece of its fingerprint.
        self.masked = "…" + (secret[-4:] if len(secret) >= 16 else self.fingerprint[:4])
        self.auth = auth
        self.group = (
            group
            if group is not None
            else LocalGroup(GroupSpec(self.fingerprint, keys=(self.fingerprint,)))
        )
        self.requests = 0
        self.tokens = 0
        self.rate_limited = 0
        self.errors = 0
        self.consecutive_429 = 0
        self.state = "ready"
        self.until = 0.0
        self.reason: str | None = None

    @property
    def secret(self) -> str:
        return self._secret

    @property
    def group_id(self) -> str:
        """The fingerprint of the key that names this key's group."""
        return self.group.spec.id

    def __repr__(self) -> str:
        return f"Key({self.masked})"

    __str__ = __repr__

    def describe_state(self, now: float) -> str:
        """``ready``, ``cooling until 14:03:07``, ``parked until …``, ``disabled``."""
        return describe_state(self.state, self.until, now)


#: Past this (the year 9999), an ``until`` is not a time: the key waits for this run.
_LAST_TIME = 253_402_300_799.0


def describe_state(state: str, until: float | None, now: float) -> str:
    """A key's state for people; ``until`` of ``None``, infinity, NaN or past the year 9999
    means for this run. Never raises, whatever the store or an answer held."""
    if state not in ("cooling", "parked"):
        return state
    if until is None or not math.isfinite(until) or until >= _LAST_TIME:
        return f"{state} for this run"
    if until <= now:
        return "ready"
    try:
        when = dt.datetime.fromtimestamp(until).strftime(
            "%H:%M:%S" if until - now < 86400 else "%Y-%m-%d %H:%M"
        )
    except (OverflowError, OSError, ValueError):  # beyond what this platform can show
        return f"{state} for this run"
    return f"{state} until {when}"


def shown_until(until: float | None) -> float | None:
    """``until`` as a key row shows it: a finite time, or ``None`` (for this run)."""
    if until is None or not math.isfinite(until) or until >= _LAST_TIME:
        return None
    return until


_AUTH = re.compile(r"^(bearer|token|header:[A-Za-z0-9-]+|query:[A-Za-z0-9_.-]+)$")


class KeyPool:
    """The keys a job may use, their limits, and how each travels.

    ``auth`` is ``"bearer"`` (``Authorization: Bearer KEY``, the default), ``"token"``
    (GitHub's ``Authorization: token KEY``), ``"header:NAME"`` or ``"query:NAME"``.

    Limits are per key: shorthands ``rpm``, ``tpm``, ``rpd``, ``concurrency``, or any
    ``limits=["15/minute", "1500/day", "5000/hour", "60/3s", "1000000 tokens/minute",
    "8 concurrent"]``. Daily windows reset at midnight in ``day_resets`` (a time zone
    name, UTC by default). ``shared=True`` makes the keys one group with one set of
    meters (keys of one account sharing its quota). Pools add up: ``pool_a + pool_b``.

    Limits nobody configured are learned from the provider's answers, with the window
    each answer gives (smooth, or fixed as GitHub's are): a pool without any limit set
    runs at what its keys allow too. ``"5000/hour fixed"`` (or ``Limit("5000/hour",
    fixed=True)``) says a window is fixed before any answer does.

    >>> pool = KeyPool(["k1-0123456789abcdef", "k2-0123456789abcdef"], rpm=15, rpd=1500,
    ...                day_resets="America/Los_Angeles")
    """

    def __init__(
        self,
        keys: Iterable[str],
        *,
        auth: str = "bearer",
        rpm: int | None = None,
        tpm: int | None = None,
        rpd: int | None = None,
        concurrency: int | None = None,
        limits: Iterable[str | Limit] = (),
        day_resets: str | None = None,
        shared: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        missing: str | None = None,
    ) -> None:
        secrets = [k.strip() for k in keys if k and k.strip()]
        if not secrets and missing is None:
            raise ConfigError("KeyPool: no keys given")
        #: why the pool has no keys (``from_env`` found none), said when a run needs them
        self.missing = missing
        if not _AUTH.match(auth):
            raise ConfigError(
                f"KeyPool: auth {auth!r} is not one of bearer, token, header:NAME, query:NAME"
            )
        parsed = [parse_limit(x) for x in limits]
        for count, text in (
            (rpm, "{}/minute"),
            (tpm, "{} tokens/minute"),
            (rpd, "{}/day"),
            (concurrency, "{} concurrent"),
        ):
            if count is not None:
                parsed.append(parse_limit(text.format(count)))
        self.limits = tuple(parsed)
        self.day_resets = day_resets
        zone(day_resets)  # an unknown time zone is a configuration error now, not later
        unique = list(dict.fromkeys(secrets))
        prints = [fingerprint(s) for s in unique]
        shared_group = (
            LocalGroup(GroupSpec(prints[0], self.limits, day_resets, tuple(prints)))
            if shared and prints
            else None
        )
        self.keys = [
            Key(
                s,
                auth=auth,
                group=shared_group or LocalGroup(GroupSpec(fp, self.limits, day_resets, (fp,))),
            )
            for s, fp in zip(unique, prints, strict=True)
        ]
        self.auth = auth
        self._reported: dict[str, tuple[int, int, int, int]] = {}
        self._local = LocalBackend((k.group for k in self.keys), clock)
        self.limiter: Limiter[Key] = Limiter(self.keys, clock, self._local)

    def __add__(self, other: KeyPool) -> KeyPool:
        """A pool with the keys (and groups, limits, auth) of both."""
        merged = copy.copy(self)
        merged.keys = [*self.keys, *[k for k in other.keys if k not in self.keys]]
        merged.limits = self.limits + other.limits
        merged.missing = None if merged.keys else (self.missing or other.missing)
        merged._reported = {}
        clock = self.limiter.clock
        merged._local = LocalBackend((k.group for k in merged.keys), clock)
        merged.limiter = Limiter(merged.keys, clock, merged._local)
        return merged

    @property
    def clock(self) -> Clock:
        return self.limiter.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self.limiter.clock = clock
        self._local.clock = clock

    def bind(
        self,
        clock: Clock,
        on_event: Callable[[str], None],
        *,
        stop_when_out_of_quota: bool = False,
        backend: MeterBackend | None = None,
    ) -> None:
        """Attach the pool to a run: its clock, where events go, and where its meters live.

        ``backend`` ``None`` keeps the pool's own in-process meters; a shared backend
        (``open_meter_backend("redis://…")``) shares every key's quota with the other
        workers. With it, ``await pool.limiter.start()`` before the first request and
        ``await pool.limiter.aclose()`` after the run (both do nothing for local meters).
        Waiting acquirers of a previous run's :meth:`Limiter.close` are forgotten.

        A pool whose keys were not found (:meth:`from_env` on a machine without them)
        raises :class:`~paceline.errors.ConfigError` here: a run needs its keys; reading a
        job's state does not.
        """
        self.require_keys()
        limiter = self.limiter
        self.clock = clock
        limiter.on_event = on_event
        limiter.stop_when_out_of_quota = stop_when_out_of_quota
        if backend is None:
            backend = self._local
        elif isinstance(backend, LocalBackend):
            backend.adopt(k.group for k in self.keys)  # the keys' own meters, not copies
        limiter.use(backend)
        limiter.reopen()

    def require_keys(self) -> None:
        """Raise :class:`~paceline.errors.ConfigError` if the pool has no keys (their
        environment variables were not set), saying which to set."""
        if self.missing is not None:
            raise ConfigError(self.missing)

    def groups(self) -> list[tuple[Key, LocalGroup]]:
        """Each group once, with the key that names it in the store, and its in-process
        meters (for the store's daily usage, use ``limiter.day_usage`` and
        ``limiter.restore_day``: they work with every backend)."""
        seen: dict[int, tuple[Key, LocalGroup]] = {}
        for key in self.keys:
            seen.setdefault(id(key.group), (key, key.group))
        return list(seen.values())

    def describe(self, now: float) -> list[dict[str, Any]]:
        """One dict per key: what the dashboard, ``keys`` and ``status --json`` show.

        A pure read: the limits in force and today's usage as the meter backend has them
        (with Redis, as last read back, within a second), states as this process knows.
        """
        rows = []
        views = {spec.id: self.limiter.view(spec.id, now) for spec in self.limiter.groups()}
        for key in self.keys:
            view = views[key.group.spec.id]
            today = [
                {"unit": day.limit.unit, "used": round(day.used), "limit": day.limit.count}
                for day in view.today
            ]
            state, until, reason = key.state, key.until, key.reason
            if state == "ready" or (state == "cooling" and until <= now):
                # A fixed window spent: the key waits for its reset, as if parked.
                spent = [w for w in view.windows if w.spent and w.resets_at > now]
                if spent:
                    window = max(spent, key=lambda w: w.resets_at)
                    state, until = "parked", window.resets_at
                    reason = f"{window.limit.describe()} spent until its reset"
            shown = describe_state(state, until, now)
            waiting = shown.startswith(("cooling until", "parked until"))
            rows.append(
                {
                    "key": key.masked,
                    "requests": key.requests,
                    "tokens": key.tokens,
                    "rate_limited": key.rate_limited,
                    "errors": key.errors,
                    "state": shown,
                    "until": shown_until(until) if waiting else None,
                    "reason": reason if shown != "ready" else key.reason,
                    "limits": [limit.describe() for limit in view.limits],
                    "today": today,
                }
            )
        return rows

    @property
    def limited(self) -> bool:
        """Whether the keys bound the run's throughput, so the engine sizes its workers to
        them (automatic concurrency): every pool with keys, whether its limits are
        configured, learned, or still to be learned from the provider's answers."""
        return bool(self.keys)

    @classmethod
    def from_env(
        cls,
        prefix: str,
        *,
        env_file: str | os.PathLike[str] | None = ".env",
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> KeyPool:
        """Keys from ``PREFIX1``, ``PREFIX_2``, … or one comma-separated ``PREFIX``.

        Variables in the process environment win over those in ``env_file``; a relative
        ``env_file`` is read in the current folder and, in a job file, beside it (that one
        winning); ``options`` are those of :class:`KeyPool` (``auth``, ``rpm``, ``limits``,
        …).

        No keys found is not an error here: a job file is also loaded where its keys are
        not (``paceline status`` on another machine). The pool then has no keys, and a run
        raises :class:`~paceline.errors.ConfigError` ("no keys found: set …") when it
        binds the pool (:meth:`bind`, :meth:`require_keys`).
        """
        env: dict[str, str] = {}
        files = [] if env_file is None else [Path(env_file)]
        folder = job_folder.get()
        if env_file is not None and folder is not None and not Path(env_file).is_absolute():
            files.append(folder / env_file)  # beside the job file: wins over the cwd's
        for file in (f for f in files if f.is_file()):
            from dotenv import dotenv_values

            env.update({k: v for k, v in dotenv_values(file).items() if v is not None})
        env.update(os.environ if environ is None else environ)
        numbered = re.compile(rf"^{re.escape(prefix)}_?(\d+)$")
        found = sorted(
            (int(m.group(1)), value)
            for name, value in env.items()
            if (m := numbered.match(name)) and value.strip()
        )
        secrets = [value for _, value in found]
        for name in dict.fromkeys([prefix, prefix.rstrip("_")]):
            secrets += [part for part in env.get(name, "").split(",") if part.strip()]
        missing = None
        if not secrets:
            shown = prefix.rstrip("_")
            missing = (
                f"no keys found: set {shown}_1, {shown}_2, … or {shown}=key1,key2 "
                "in the environment or a .env file"
            )
        return cls(secrets, missing=missing, **options)

    # -- choosing a key ----------------------------------------------------------------

    def usable(self) -> list[Key]:
        return [k for k in self.keys if k.state != "disabled"]

    async def acquire(self, cost: Cost | None = None) -> Lease[Key]:
        """A key and a slot for one request of ``cost`` (see :class:`Limiter`)."""
        self.require_keys()
        return await self.limiter.acquire(cost or Cost())

    def settle(self, lease: Lease[Key], feedback: Feedback) -> None:
        """Learn from the answer to a leased request (see :meth:`Limiter.settle`)."""
        self.limiter.settle(lease, feedback)

    def release(self, lease: Lease[Key]) -> None:
        """The request is over: free its concurrency slot."""
        self.limiter.release(lease)

    # -- sending -----------------------------------------------------------------------

    def headers_and_params(self, key: Key) -> tuple[dict[str, str], dict[str, str]]:
        """What to add to a request so it carries ``key``."""
        kind, _, name = key.auth.partition(":")
        if kind == "bearer":
            return {"Authorization": f"Bearer {key.secret}"}, {}
        if kind == "token":
            return {"Authorization": f"token {key.secret}"}, {}
        if kind == "header":
            return {name: key.secret}, {}
        return {}, {name: key.secret}

    def redact(self, text: str) -> str:
        """``text`` with every secret of the pool replaced by its masked form."""
        for key in self.keys:
            for form in {
                key.secret,
                urllib.parse.quote(key.secret, safe=""),
                urllib.parse.quote_plus(key.secret),
            }:
                if form in text:
                    text = text.replace(form, key.masked)
        return text

    def usage_since_last(self) -> list[tuple[Key, int, int, int, int]]:
        """Per key, the requests, tokens, 429s and errors since the previous call."""
        out = []
        for key in self.keys:
            now = (key.requests, key.tokens, key.rate_limited, key.errors)
            r, t, rl, e = self._reported.get(key.fingerprint, (0, 0, 0, 0))
            self._reported[key.fingerprint] = now
            out.append((key, now[0] - r, now[1] - t, now[2] - rl, now[3] - e))
        return out
