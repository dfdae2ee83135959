"""API keys: loaded from the environment, shown masked, stored by fingerprint.

A :class:`KeyPool` holds the keys a job may use and says how each travels (a bearer token,
GitHub's ``token`` scheme, a named header, a query parameter). It hands a key to each
request through :meth:`KeyPool.acquire`, the seam where the limiter decides *which* key may
send *when*; here a key that answered 429 cools down for the time the answer asked, and a
key the provider rejected (401) is disabled for the run.

>>> pool = KeyPool(["sk-live-0123456789abcdef"])
>>> pool.keys[0].masked
'…cdef'
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigError

__all__ = ["Cost", "Key", "KeyPool", "NoUsableKey"]


@dataclass(frozen=True, slots=True)
class Cost:
    """What one request is expected to use: requests and tokens."""

    requests: int = 1
    tokens: int = 0


class NoUsableKey(ConfigError):
    """Every key of the pool was rejected by the provider."""


class Key:
    """One API key. ``repr`` and ``str`` never show the secret."""

    __slots__ = (
        "_secret",
        "cooling_until",
        "errors",
        "fingerprint",
        "masked",
        "rate_limited",
        "requests",
        "state",
        "tokens",
    )

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self.fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:16]
        # Long keys show their last four characters, as providers' dashboards do; a short
        # key would be half given away by that, so it shows a piece of its fingerprint.
        self.masked = "…" + (secret[-4:] if len(secret) >= 16 else self.fingerprint[:4])
        self.requests = 0
        self.tokens = 0
        self.rate_limited = 0
        self.errors = 0
        self.state = "ready"
        self.cooling_until = 0.0

    @property
    def secret(self) -> str:
        return self._secret

    def __repr__(self) -> str:
        return f"Key({self.masked})"

    __str__ = __repr__


_AUTH = re.compile(r"^(bearer|token|header:[A-Za-z0-9-]+|query:[A-Za-z0-9_.-]+)$")


class KeyPool:
    """The keys a job may use, and how each travels.

    ``auth`` is ``"bearer"`` (``Authorization: Bearer KEY``, the default), ``"token"``
    (GitHub's ``Authorization: token KEY``), ``"header:NAME"`` or ``"query:NAME"``.
    """

    def __init__(
        self, keys: Iterable[str], *, auth: str = "bearer", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        secrets = [k.strip() for k in keys if k and k.strip()]
        if not secrets:
            raise ConfigError("KeyPool: no keys given")
        if not _AUTH.match(auth):
            raise ConfigError(
                f"KeyPool: auth {auth!r} is not one of bearer, token, header:NAME, query:NAME"
            )
        self.keys = [Key(s) for s in dict.fromkeys(secrets)]
        self.auth = auth
        self.clock = clock
        self._next = 0
        self._reported: dict[str, tuple[int, int, int, int]] = {}

    @classmethod
    def from_env(
        cls,
        prefix: str,
        *,
        env_file: str | os.PathLike[str] | None = ".env",
        environ: Mapping[str, str] | None = None,
        auth: str = "bearer",
    ) -> KeyPool:
        """Keys from ``PREFIX1``, ``PREFIX_2``, … or one comma-separated ``PREFIX``.

        Variables in the process environment win over those in ``env_file``.
        """
        env: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            from dotenv import dotenv_values

            env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
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
        if not secrets:
            shown = prefix.rstrip("_")
            raise ConfigError(
                f"no keys found: set {shown}_1, {shown}_2, … or {shown}=key1,key2 "
                "in the environment or a .env file"
            )
        return cls(secrets, auth=auth)

    # -- choosing a key ----------------------------------------------------------------

    def usable(self) -> list[Key]:
        return [k for k in self.keys if k.state != "disabled"]

    async def acquire(self, cost: Cost | None = None) -> Key:
        """The key the next request should use (round robin over keys not cooling)."""
        while True:
            usable = self.usable()
            if not usable:
                raise NoUsableKey("no usable key left: every key was rejected by the provider")
            now = self.clock.time()
            for _ in range(len(self.keys)):
                key = self.keys[self._next % len(self.keys)]
                self._next += 1
                if key.state != "disabled" and key.cooling_until <= now:
                    if key.state == "cooling":
                        key.state = "ready"
                    key.requests += 1
                    key.tokens += cost.tokens if cost else 0
                    return key
            await self.clock.sleep(min(k.cooling_until for k in usable) - now)

    def record(self, key: Key, status: int, retry_after: float | None) -> None:
        """Learn from an answer: a 429 cools the key, a 401 disables it."""
        if status == 429:
            key.rate_limited += 1
            key.state = "cooling"
            key.cooling_until = self.clock.time() + (1.0 if retry_after is None else retry_after)
        elif status == 401:
            key.errors += 1
            key.state = "disabled"
        elif status >= 500:
            key.errors += 1

    # -- sending -----------------------------------------------------------------------

    def headers_and_params(self, key: Key) -> tuple[dict[str, str], dict[str, str]]:
        """What to add to a request so it carries ``key``."""
        kind, _, name = self.auth.partition(":")
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
