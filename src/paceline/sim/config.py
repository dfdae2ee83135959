"""How the simulated provider behaves: per-key limits, latency, faults.

Everything here is a frozen dataclass, so one :class:`SimConfig` can be shared by the app, the
server thread and the test that built it without anyone changing it underneath the others.

>>> cfg = SimConfig.from_cli(keys="sk-a,sk-b:rpm=3", rpm=60, latency="uniform:0.01,0.05")
>>> cfg.limits_for("sk-b")
KeyLimits(rpm=3, tpm=None, rpd=None, rph=None, concurrency=None)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "FixedLatency",
    "KeyLimits",
    "Latency",
    "LognormalLatency",
    "SimConfig",
    "UniformLatency",
    "parse_key_spec",
    "parse_latency",
]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The quota of one key; ``None`` means that meter is not enforced.

    ``rpm``/``tpm`` are sliding one-minute windows (OpenAI, Anthropic, Gemini), ``rph`` is a
    fixed hourly window that starts with the first request (GitHub's primary limit), ``rpd`` a
    fixed window ending at the next midnight of :attr:`SimConfig.day_resets_tz` (Gemini), and
    ``concurrency`` caps requests in flight at once (GitHub's secondary limit of concurrent
    requests, in GitHub's style). ``rph_left`` and ``rph_reset`` start a key's hourly window
    already open when the key is first used: that many requests left, resetting that many
    seconds later (a token used elsewhere before the run).
    """

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    rph: int | None = None
    concurrency: int | None = None
    rph_left: int | None = None
    rph_reset: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if f.name == "rph_left" else 1
            if value is not None and (not isinstance(value, int) or value < least):
                raise ValueError(f"{f.name} must be a positive whole number, not {value!r}")


@dataclass(frozen=True, slots=True)
class FixedLatency:
    """Every answer takes the same time."""

    seconds: float = 0.0

    def sample(self, rng: random.Random) -> float:
        """Seconds the next answer waits."""
        return self.seconds

    def __str__(self) -> str:
        return f"fixed:{self.seconds:g}"


@dataclass(frozen=True, slots=True)
class UniformLatency:
    """Answers take between ``low`` and ``high`` seconds, evenly spread."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        """Seconds the next answer waits."""
        return rng.uniform(self.low, self.high)

    def __str__(self) -> str:
        return f"uniform:{self.low:g},{self.high:g}"


@dataclass(frozen=True, slots=True)
class LognormalLatency:
    """Answers take ``median`` seconds typically, with a long tail (how LLM APIs feel).

    ``sigma`` is the standard deviation of the log: 0.5 puts the 95th percentile at about
    2.3 times the median.
    """

    median: float
    sigma: float

    def sample(self, rng: random.Random) -> float:
        """Seconds the next answer waits."""
        return rng.lognormvariate(math.log(self.median), self.sigma)

    def __str__(self) -> str:
        return f"lognormal:{self.median:g},{self.sigma:g}"


Latency = FixedLatency | UniformLatency | LognormalLatency
"""A distribution of answer times; build one with :func:`parse_latency`."""

_LATENCY_FORMS = "SECONDS, fixed:SECONDS, uniform:LOW,HIGH or lognormal:MEDIAN,SIGMA"


def parse_latency(spec: str) -> Latency:
    """Read a latency distribution from text, as given on the command line.

    >>> parse_latency("0.05")
    FixedLatency(seconds=0.05)
    >>> parse_latency("lognormal:0.3,0.5")
    LognormalLatency(median=0.3, sigma=0.5)
    """
    text = spec.strip().lower()
    kind, sep, rest = text.partition(":")
    if not sep:
        kind, rest = "fixed", text
    try:
        numbers = [float(part) for part in rest.split(",")]
    except ValueError:
        raise ValueError(f"bad latency {spec!r}: expected {_LATENCY_FORMS}") from None
    arity = {"fixed": 1, "uniform": 2, "lognormal": 2}.get(kind)
    if arity is None or len(numbers) != arity or not all(map(math.isfinite, numbers)):
        raise ValueError(f"bad latency {spec!r}: expected {_LATENCY_FORMS}")
    if any(n < 0 for n in numbers):
        raise ValueError(f"bad latency {spec!r}: seconds must not be negative")
    if kind == "fixed":
        return FixedLatency(numbers[0])
    if kind == "uniform":
        low, high = numbers
        if low > high:
            raise ValueError(f"bad latency {spec!r}: LOW must not exceed HIGH")
        return UniformLatency(low, high)
    median, sigma = numbers
    if median == 0:
        raise ValueError(f"bad latency {spec!r}: the lognormal MEDIAN must be above 0")
    return LognormalLatency(median, sigma)


def parse_key_spec(spec: str) -> tuple[str, dict[str, int]]:
    """Split ``"KEY"`` or ``"KEY:rpm=3:tpm=1000"`` into the key and its limit overrides.

    Overrides are separated by colons, not commas, so a comma-separated list of specs
    (``--keys a,b:rpm=3:rpd=100``) splits cleanly.

    >>> parse_key_spec("sk-b:rpm=3:rpd=100")
    ('sk-b', {'rpm': 3, 'rpd': 100})
    """
    key, sep, rest = spec.partition(":")
    key = key.strip()
    if not key:
        raise ValueError(f"bad key {spec!r}: the key is empty")
    overrides: dict[str, int] = {}
    names = {f.name for f in fields(KeyLimits)}
    for part in rest.split(":") if sep else ():
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in names or not value.strip().isdigit():
            raise ValueError(
                f"bad key {_masked(key)}: limits look like KEY:rpm=3:tpm=1000 "
                f"(known: {', '.join(sorted(names))})"
            )
        overrides[name] = int(value)
    return key, overrides


def _split(values: str | Iterable[str] | None) -> list[str]:
    """Non-empty, stripped items of a list or of a comma-separated string."""
    items = values.split(",") if isinstance(values, str) else (values or ())
    return [item.strip() for item in items if item.strip()]


def _masked(key: str) -> str:
    # Error messages end up in terminals and CI logs: never echo a whole key.
    return "…" + key[-4:]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the simulated provider does; every field has a harmless default.

    ``keys`` maps each accepted key to its limits; ``None`` accepts any non-empty key, each
    with ``default_limits``. Keys in ``revoked`` are answered the way each provider answers an
    invalid key. ``error_rate`` is the share of admitted requests answered with a 5xx,
    ``hang_rate`` the share that wait ``hang_seconds`` before answering. ``seed`` makes faults
    and latencies repeatable. ``github_limit_status`` is 403 (GitHub's usual answer to an
    exhausted primary limit) or 429 (which GitHub also documents); ``openai_organization``
    is the organization OpenAI-style 429 messages name. ``token_bucket`` meters tokens per
    minute as a bucket refilled as it goes (Anthropic's documented algorithm), not as a
    sliding minute.
    """

    keys: Mapping[str, KeyLimits] | None = None
    default_limits: KeyLimits = field(default_factory=KeyLimits)
    # repr=False: a config is printed in test failures and logs, and keys must not be.
    revoked: frozenset[str] = field(default=frozenset(), repr=False)
    latency: Latency = field(default_factory=FixedLatency)
    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    seed: int | None = None
    day_resets_tz: str = "America/Los_Angeles"
    github_limit_status: int = 403
    openai_organization: str = "org-sim"
    token_bucket: bool = False

    def __post_init__(self) -> None:
        for name in ("error_rate", "hang_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
        if not (math.isfinite(self.hang_seconds) and self.hang_seconds >= 0):
            raise ValueError(f"hang_seconds must be 0 or more, not {self.hang_seconds!r}")
        if self.github_limit_status not in (403, 429):
            raise ValueError(
                f"github_limit_status must be 403 or 429, not {self.github_limit_status!r}"
            )
        if self.keys is not None and any(not key for key in self.keys):
            raise ValueError("keys must not contain an empty key")
        try:
            ZoneInfo(self.day_resets_tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.day_resets_tz!r}") from None
        # A caller may hand in a mutable dict; freeze a copy so the config stays a value.
        if self.keys is not None:
            object.__setattr__(self, "keys", _FrozenKeys(self.keys))
        object.__setattr__(self, "revoked", frozenset(self.revoked))

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is a live key (known, or any key when ``keys`` is ``None``)."""
        if not key or key in self.revoked:
            return False
        return self.keys is None or key in self.keys

    def limits_for(self, key: str) -> KeyLimits:
        """The limits enforced on ``key``."""
        if self.keys is None:
            return self.default_limits
        return self.keys.get(key, self.default_limits)

    @classmethod
    def from_cli(
        cls,
        keys: str | Iterable[str] | None = (),
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        rpd: int | None = None,
        rph: int | None = None,
        concurrency: int | None = None,
        revoked: str | Iterable[str] | None = (),
        latency: str = "0",
        error_rate: float = 0.0,
        hang_rate: float = 0.0,
        hang_seconds: float = 30.0,
        seed: int | None = None,
        day_resets_tz: str = "America/Los_Angeles",
        github_limit_status: int = 403,
        token_bucket: bool = False,
    ) -> SimConfig:
        """Build a config from command-line style values; raises ``ValueError`` on bad input.

        ``keys`` are specs such as ``"sk-a"`` or ``"sk-b:rpm=3:rpd=100"``, as a list or as one
        comma-separated string (``revoked`` likewise, plain keys): each key gets the default
        limits (``rpm`` ... ``concurrency``) with its own overrides on top. No keys means any
        key is accepted with the default limits.

        >>> SimConfig.from_cli("a,b:rpm=3", rpm=60).limits_for("b").rpm
        3
        """
        defaults = KeyLimits(rpm=rpm, tpm=tpm, rpd=rpd, rph=rph, concurrency=concurrency)
        table: dict[str, KeyLimits] = {}
        for spec in _split(keys):
            key, overrides = parse_key_spec(spec)
            table[key] = replace(defaults, **overrides)
        return cls(
            keys=table or None,
            default_limits=defaults,
            revoked=frozenset(_split(revoked)),
            latency=parse_latency(latency),
            error_rate=error_rate,
            hang_rate=hang_rate,
            hang_seconds=hang_seconds,
            seed=seed,
            day_resets_tz=day_resets_tz,
            github_limit_status=github_limit_status,
            token_bucket=token_bucket,
        )


class _FrozenKeys(Mapping[str, KeyLimits]):
    """A read-only copy of the key table whose repr never shows a whole key."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, KeyLimits]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> KeyLimits:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        inner = ", ".join(f"{_masked(k)!r}: {v!r}" for k, v in self._data.items())
        return "{" + inner + "}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))
