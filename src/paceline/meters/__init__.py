"""Meter backends: where the limiter's meters live.

``local`` (the default) keeps them in this process; ``redis://…`` shares every key's quota
across processes and machines (install ``paceline[redis]``). A run uses one like this::

    backend = open_meter_backend(url)          # None or "local": this process's meters
    pool.bind(clock, note, backend=backend)
    await pool.limiter.start()
    for group, start, unit, _ in pool.limiter.day_usage(clock.time()):
        pool.limiter.restore_day(group, start, unit, store_says_spent(group, start, unit))
    ...                                        # requests: pool.acquire / settle / release
    await pool.limiter.aclose()

>>> backend = open_meter_backend(None)
>>> backend.shared
False
"""

from __future__ import annotations

import urllib.parse

from paceline.clock import Clock
from paceline.errors import ConfigError

from .local import LocalBackend
from .protocol import (
    Answer,
    DayUsage,
    GroupSpec,
    GroupView,
    KeyState,
    MeterBackend,
    Refusal,
    Reservation,
    meter_id,
)

__all__ = [
    "Answer",
    "DayUsage",
    "GroupSpec",
    "GroupView",
    "KeyState",
    "LocalBackend",
    "MeterBackend",
    "Refusal",
    "Reservation",
    "meter_id",
    "open_meter_backend",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_meter_backend(
    url: str | None, *, prefix: str | None = None, clock: Clock | None = None
) -> MeterBackend:
    """The backend a URL names: ``None``, ``""`` or ``"local"`` for this process's meters,
    ``redis://``, ``rediss://`` or ``unix://`` for meters shared through Redis.

    ``prefix`` namespaces the Redis keys (``paceline:`` by default; also as the URL's
    ``?prefix=`` parameter). ``clock``: the clock to read instead of the backend's own
    (Redis's ``TIME``); for tests and simulations.
    """
    if url is None or url.strip() in ("", "local"):
        return LocalBackend() if clock is None else LocalBackend(clock=clock)
    if not url.startswith(_REDIS_SCHEMES):
        shown = url.split("://", 1)[0] + "://…" if "://" in url else url  # no password shown
        raise ConfigError(
            f"meter backend {shown!r}: use 'local' or a Redis URL (redis://, rediss://, unix://)"
        )
    try:
        from .redis import RedisBackend
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "redis":
            raise
        raise ConfigError(
            "the Redis limiter needs the redis extra: pip install 'paceline[redis]'"
        ) from None
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    named = [v for k, v in query if k == "prefix"]
    if named and prefix is None:
        prefix = named[-1]
        rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "prefix"])
        url = urllib.parse.urlunsplit(parts._replace(query=rest))
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ConfigError(f"limiter URL: the database must be a number, not {database!r}")
    try:
        return RedisBackend.from_url(url, prefix=prefix, clock=clock)
    except (ValueError, TypeError) as exc:  # redis-py's word on a malformed URL or option
        raise ConfigError(f"limiter URL: {str(exc).splitlines()[0]}") from None
