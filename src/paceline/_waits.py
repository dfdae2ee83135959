"""Every wait an answer (or task code) gives, read and checked in one place.

A wait read from an answer decides how long a key rests and when an item is tried again,
and the store keeps it. One absurd value would do lasting harm: ``retry-after-ms: inf`` makes
an item due at infinity (the job never finishes, reruns included), ``Retry-After:
300000000000`` or a reset in microseconds read as seconds cools a key past the year 9999,
and a window of ``w=-60`` is no window at all. So :class:`Waits` is the one gate: a wait that
is not a finite, non-negative number, or lies more than :data:`MAX_WAIT` ahead, is dropped
(the caller's default backoff applies) and the first one dropped is kept in
:attr:`Waits.ignored`, for the user to be told once.

>>> waits = Waits(now=1_000.0)
>>> waits.delay(20.0, "Retry-After"), waits.delay(3e11, "Retry-After")
(20.0, None)
>>> waits.ignored
'ignored Retry-After of 300000000000 s: more than a day'
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC, datetime

__all__ = [
    "MAX_PERIOD",
    "MAX_WAIT",
    "MIN_PERIOD",
    "Waits",
    "epoch_or_delay",
    "header_dict",
    "number",
    "retry_after",
    "sane_delay",
    "sane_period",
    "sane_until",
    "timestamp",
]

MAX_WAIT = 86_400.0
"""The longest wait an answer may ask for: no provider's window outlasts a day unannounced."""
MIN_PERIOD = 0.001
"""The shortest window length believed: shorter ones would turn a limit into infinite rates."""
MAX_PERIOD = 366 * 86_400.0
"""The longest window length believed (monthly quotas are real, decades are not)."""


def sane_delay(seconds: float) -> float | None:
    """``seconds`` if it is a wait to honour: finite, not negative, at most :data:`MAX_WAIT`."""
    return seconds if _delay_problem(seconds) is None else None


def sane_until(at: float, now: float) -> float | None:
    """``at`` (epoch seconds) if it is a time to wait for: finite and at most
    :data:`MAX_WAIT` after ``now``. A time already past means now: the wait is over."""
    if not math.isfinite(at) or at - now > MAX_WAIT:
        return None
    return max(at, now)


def sane_period(seconds: float) -> float | None:
    """``seconds`` if it is a window length to believe: :data:`MIN_PERIOD` to
    :data:`MAX_PERIOD`."""
    return seconds if _period_problem(seconds) is None else None


def _delay_problem(seconds: float) -> str | None:
    if not math.isfinite(seconds):
        return "not a finite number"
    if seconds < 0:
        return "negative"
    if seconds > MAX_WAIT:
        return "more than a day"
    return None


def _period_problem(seconds: float) -> str | None:
    if not math.isfinite(seconds):
        return "not a finite number"
    if seconds <= 0:
        return "not positive"
    if seconds < MIN_PERIOD:
        return "shorter than a millisecond"
    if seconds > MAX_PERIOD:
        return "longer than a year"
    return None


class Waits:
    """Checks the waits read from one answer against ``now``; remembers the first it ignored.

    ``what`` names where a wait came from (``"Retry-After"``, ``"x-ratelimit-reset"``): a
    fixed name chosen by the caller, never text from the answer, so ``ignored`` is safe to
    show anywhere.
    """

    __slots__ = ("ignored", "now")

    def __init__(self, now: float) -> None:
        self.now = now
        self.ignored: str | None = None

    def delay(self, seconds: object, what: str) -> float | None:
        """``seconds`` to wait, if sane; else ``None``, noted."""
        value = _real(seconds)
        if value is None:
            if seconds is not None:
                self._note(f"ignored {what}: not a number ({type(seconds).__name__})")
            return None
        problem = _delay_problem(value)
        if problem is not None:
            self._note(f"ignored {what}{_of(value)}: {problem}")
            return None
        return value

    def after(self, seconds: object, what: str) -> float | None:
        """The time ``seconds`` from now, if the wait is sane; else ``None``, noted."""
        value = self.delay(seconds, what)
        return None if value is None else self.now + value

    def until(self, at: float | None, what: str) -> float | None:
        """``at`` (epoch seconds) if sane (a time already past is now); else ``None``, noted."""
        if at is None:
            return None
        checked = sane_until(at, self.now)
        if checked is None:
            ahead = at - self.now
            if math.isfinite(ahead):
                self._note(f"ignored {what} {_number(ahead)} s ahead: more than a day")
            else:
                self._note(f"ignored {what} of {at}: not a finite number")
        return checked

    def period(self, seconds: float | None, what: str) -> float | None:
        """A window length, if sane; else ``None``, noted."""
        if seconds is None:
            return None
        problem = _period_problem(seconds)
        if problem is not None:
            self._note(f"ignored {what}{_of(seconds)}: {problem}")
            return None
        return seconds

    def _note(self, text: str) -> None:
        if self.ignored is None:  # the first is enough: the user is told once
            self.ignored = text


def _real(value: object) -> float | None:
    """A number given by code (a task's ``retry_after``); ``None`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return math.inf if value > 0 else -math.inf


def _of(value: float) -> str:
    return f" of {_number(value)} s" if math.isfinite(value) else f" of {value}"


def _number(value: float) -> str:
    return f"{value:.15g}"


# -- reading ------------------------------------------------------------------------------


def header_dict(headers: object) -> dict[str, str]:
    """Headers with lower-case names and stripped values; anything odd is left out."""
    if not isinstance(headers, Mapping):
        return {}
    try:
        items = list(headers.items())
    except Exception:  # a mapping-like object from an SDK that cannot list itself
        return {}
    out = {}
    for k, v in items:
        if not isinstance(k, str) or isinstance(v, bool):
            continue
        if isinstance(v, str | int | float):  # an SDK may hand over numbers, not text
            out[k.strip().lower()] = str(v).strip()
    return out


def number(text: object) -> float | None:
    """A number in a header value (``inf`` and ``nan`` included: the caller judges them)."""
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        return None
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def timestamp(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 date (Anthropic) or an HTTP-date (``Retry-After``)."""
    try:
        when = datetime.fromisoformat(text or "")
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text or "")
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    try:
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def epoch_or_delay(value: float, now: float) -> float:
    """A reset given as a number: epoch seconds, milliseconds, microseconds or nanoseconds
    (GitHub, IETF drafts and gateways all occur), or else seconds from now.

    Told apart by size, as no window lasts 30 years: 1.7e9 is seconds since 1970, 1.7e12
    milliseconds, 1.7e15 microseconds, 1.7e18 nanoseconds; below 1e9 it is a delay.
    """
    if value >= 1e17:
        return value / 1e9
    if value >= 1e14:
        return value / 1e6
    if value >= 1e11:
        return value / 1e3
    return value if value >= 1e9 else now + value


def retry_after(h: Mapping[str, str], waits: Waits) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP-date),
    checked; ``h`` has lower-case names (:func:`header_dict`)."""
    ms = number(h.get("retry-after-ms"))
    if ms is not None:
        seconds = waits.delay(ms / 1000, "retry-after-ms")
        if seconds is not None:
            return seconds
    raw = h.get("retry-after")
    if raw is None:
        return None
    seconds_given = number(raw)
    if seconds_given is not None:
        return waits.delay(seconds_given, "Retry-After")
    at = waits.until(timestamp(raw), "Retry-After date")
    return None if at is None else at - waits.now
