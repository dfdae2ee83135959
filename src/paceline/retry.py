"""Deciding what a failed attempt means: retry later (and when), or give up.

A retry is a stored decision, not a sleep: the engine writes the item back to the store as
``retry`` with its due time, so a waiting retry survives a restart.

Retryable: HTTP 429, 408 and 5xx; connection errors and timeouts; SQLite "busy/locked";
:class:`~paceline.Retryable` raised by the task; any exception type the job lists in
``retry_on``. Everything else, other 4xx included, is permanent. A ``Retry-After`` (or
``retry-after-ms``) on the answer sets the delay; otherwise exponential backoff with full
jitter (a uniform draw between 0 and ``base * 2**(attempt-1)``, capped).

A wait that is not a finite, non-negative number of seconds, or is more than a day, is
ignored, whoever asked for it (the answer or the task's ``Retryable(retry_after=...)``): the
backoff applies instead and ``Failure.ignored`` says what was ignored. So a stored due time
is always finite and near.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ._waits import Waits, header_dict, retry_after
from .errors import Permanent, Retryable

__all__ = ["Backoff", "Failure", "classify", "retry_after_seconds"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter."""

    base: float = 1.0
    cap: float = 120.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True, slots=True)
class Failure:
    """How an exception was read: retryable or not, a wait the server asked for, a message.

    ``retry_after`` is seconds, finite and at most a day, or ``None`` (back off). ``ignored``
    names an absurd wait that was asked for and ignored, for the user to be told once.
    """

    retryable: bool
    retry_after: float | None
    message: str
    ignored: str | None = None


def retry_after_seconds(headers: object, now: float) -> float | None:
    """The wait a server asked for in ``retry-after-ms`` or ``Retry-After`` (s or date);
    ``None`` when there is none, or none to believe (infinite, negative, over a day)."""
    return retry_after(header_dict(headers), Waits(now))


_RETRYABLE_STATUS = frozenset({408, 429})


def _status_retryable(status: int) -> bool:
    return status in _RETRYABLE_STATUS or status >= 500


def _http_message(response: httpx.Response) -> str:
    request = response.request
    url = request.url.copy_with(query=None, userinfo=b"")
    text = f"HTTP {response.status_code} {response.reason_phrase} from {request.method} {url}"
    try:
        body = response.text.strip().replace("\n", " ")
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        body = ""
    if body:
        text += f": {body}"
    return text


def _exception_text(exc: BaseException) -> str:
    try:
        text = str(exc).strip().replace("\n", " ")
    except Exception:  # an exception whose __str__ fails still fails its item, by name
        text = ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def classify(
    exc: BaseException,
    now: float,
    retry_on: tuple[type[BaseException], ...] = (),
    redact: Callable[[str], str] | None = None,
) -> Failure:
    """Read an exception raised by an attempt; ``redact`` hides secrets in the message
    (before it is shortened, so no piece of a secret survives the cut)."""
    waits = Waits(now)
    failure = _classify(exc, waits, retry_on)
    message = failure.message if redact is None else redact(failure.message)
    if len(message) > 500:
        message = message[:497] + "..."
    return Failure(failure.retryable, failure.retry_after, message, waits.ignored)


def _classify(
    exc: BaseException, waits: Waits, retry_on: tuple[type[BaseException], ...]
) -> Failure:
    if isinstance(exc, Retryable):
        after = waits.delay(getattr(exc, "retry_after", None), "the task's retry_after")
        return Failure(True, after, _exception_text(exc))
    if isinstance(exc, Permanent):
        return Failure(False, None, _exception_text(exc))
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        after = retry_after(header_dict(response.headers), waits)
        return Failure(_status_retryable(response.status_code), after, _http_message(response))
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Failure(False, None, _exception_text(exc))  # a wrong URL will not heal
    if isinstance(exc, (httpx.TransportError, TimeoutError)):
        return Failure(True, None, _exception_text(exc))
    if isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc) for word in ("locked", "busy")
    ):
        return Failure(True, None, _exception_text(exc))
    # SDK errors (openai, anthropic, google) carry the HTTP status and the answer.
    status, headers = _sdk_answer(exc)
    if status is not None:
        after = retry_after(header_dict(headers), waits)
        return Failure(_status_retryable(status), after, _exception_text(exc))
    if retry_on and isinstance(exc, retry_on):
        return Failure(True, None, _exception_text(exc))
    return Failure(False, None, _exception_text(exc))


def _sdk_answer(exc: BaseException) -> tuple[int | None, object]:
    """The HTTP status and headers an SDK's exception carries, if any."""
    try:
        response: Any = getattr(exc, "response", None)
        status: Any = getattr(exc, "status_code", None)
        if status is None and response is not None:
            status = getattr(response, "status_code", None)
        if not isinstance(status, int) or isinstance(status, bool):
            return None, None
        return status, getattr(response, "headers", None)
    except Exception:  # a property of a foreign exception that raises: no answer to read
        return None, None
