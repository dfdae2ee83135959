"""Backoff and classify: which failures are retried, after how long, and what the message says."""

from __future__ import annotations

import email.utils
import itertools
import math
import random
import sqlite3
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from paceline.errors import Permanent, Retryable
from paceline.retry import Backoff, classify, retry_after_seconds

NOW = 1_700_000_000.0
URL = "https://api.example.com/v1/chat?key=SECRET&page=2"


def status_error(
    status: int, headers: dict[str, str] | None = None, url: str = URL
) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", url)
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(f"status {status}", request=request, response=response)


# -- Backoff -----------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 12])
def test_backoff_delay_stays_between_zero_and_the_capped_ceiling(attempt: int) -> None:
    backoff = Backoff(base=0.5, cap=60.0)
    ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
    rng = random.Random(attempt)
    delays = [backoff.delay(attempt, rng) for _ in range(500)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > 0.9 * ceiling  # full jitter reaches up to the ceiling


def test_backoff_ceiling_doubles_with_each_attempt_until_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=100.0)
    rng = random.Random(7)
    highest = [max(backoff.delay(attempt, rng) for _ in range(500)) for attempt in range(1, 10)]
    for attempt, (lower, higher) in enumerate(itertools.pairwise(highest), 1):
        if 2**attempt <= 100:
            assert 1.7 < higher / lower < 2.3, f"attempt {attempt} → {attempt + 1}"
    assert 90 < highest[-1] <= 100


def test_backoff_with_the_same_seed_gives_the_same_delays() -> None:
    backoff = Backoff()
    first = [backoff.delay(n, random.Random(3)) for n in range(1, 6)]
    again = [backoff.delay(n, random.Random(3)) for n in range(1, 6)]
    assert first == again


# -- HTTP status errors ------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_rate_limits_timeouts_and_server_errors_are_retryable(status: int) -> None:
    failure = classify(status_error(status), NOW)
    assert failure.retryable
    assert failure.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_permanent(status: int) -> None:
    assert not classify(status_error(status), NOW).retryable


def test_retry_after_in_seconds_sets_the_wait() -> None:
    failure = classify(status_error(429, {"Retry-After": "7"}), NOW)
    assert (failure.retryable, failure.retry_after) == (True, 7.0)


def test_retry_after_ms_sets_the_wait() -> None:
    failure = classify(status_error(429, {"retry-after-ms": "1500"}), NOW)
    assert failure.retry_after == 1.5


def test_retry_after_as_an_http_date_is_the_time_until_then() -> None:
    when = email.utils.formatdate(NOW + 90, usegmt=True)
    failure = classify(status_error(503, {"Retry-After": when}), NOW)
    assert failure.retry_after == pytest.approx(90.0)


def test_unreadable_retry_after_leaves_the_wait_to_backoff() -> None:
    assert classify(status_error(429, {"Retry-After": "soon"}), NOW).retry_after is None


def test_message_names_status_and_url_but_not_the_query_string() -> None:
    message = classify(status_error(429), NOW).message
    assert "429" in message
    assert "Too Many Requests" in message
    assert "https://api.example.com/v1/chat" in message
    assert "SECRET" not in message
    assert "key=" not in message


def test_message_carries_the_start_of_the_response_body() -> None:
    request = httpx.Request("GET", URL)
    response = httpx.Response(400, text='{"error": "model not found"}', request=request)
    exc = httpx.HTTPStatusError("bad", request=request, response=response)
    assert classify(exc, NOW).message.endswith(': {"error": "model not found"}')


def test_message_does_not_show_a_password_from_the_url() -> None:
    message = classify(status_error(500, url="https://bot:SECRET@api.example.com/v1"), NOW).message
    assert "SECRET" not in message


# -- other exceptions --------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        TimeoutError(),
        sqlite3.OperationalError("database is locked"),
    ],
    ids=["connect", "read-timeout", "timeout", "sqlite-locked"],
)
def test_transport_failures_and_a_locked_database_are_retryable(exc: Exception) -> None:
    failure = classify(exc, NOW)
    assert failure.retryable
    assert failure.retry_after is None
    assert type(exc).__name__ in failure.message


def test_other_sqlite_errors_are_permanent() -> None:
    assert not classify(sqlite3.OperationalError("no such table: x"), NOW).retryable


def test_retryable_raised_by_the_task_keeps_its_wait() -> None:
    failure = classify(Retryable("upstream busy", retry_after=5), NOW)
    assert (failure.retryable, failure.retry_after) == (True, 5)
    assert "upstream busy" in failure.message


def test_permanent_raised_by_the_task_is_permanent_even_if_listed_in_retry_on() -> None:
    failure = classify(Permanent("no such document"), NOW, retry_on=(Exception,))
    assert not failure.retryable
    assert failure.message == "Permanent: no such document"


def test_a_plain_exception_is_permanent_unless_listed_in_retry_on() -> None:
    assert not classify(ValueError("bad"), NOW).retryable
    assert not classify(ValueError("bad"), NOW, retry_on=(KeyError,)).retryable
    assert classify(ValueError("bad"), NOW, retry_on=(KeyError, ValueError)).retryable


class FakeSDKError(Exception):
    """What openai/anthropic-style SDKs raise: the status and the answer on the exception."""

    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code
        self.response = SimpleNamespace(status_code=status_code, headers=headers)


def test_an_sdk_error_with_429_and_retry_after_is_retried_after_that_wait() -> None:
    failure = classify(FakeSDKError(429, {"retry-after": "3"}), NOW)
    assert (failure.retryable, failure.retry_after) == (True, 3.0)
    assert "429" in failure.message


def test_an_sdk_error_with_a_client_status_is_permanent() -> None:
    assert not classify(FakeSDKError(400, {}), NOW).retryable


def test_an_sdk_error_with_the_status_only_on_its_response() -> None:
    exc = Exception("server error")
    exc.response = SimpleNamespace(status_code=503, headers={})  # type: ignore[attr-defined]
    assert classify(exc, NOW).retryable


# -- no wait is infinite, absurd or negative ---------------------------------------------


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"retry-after-ms": "inf"}, "ignored retry-after-ms of inf: not a finite number"),
        ({"retry-after-ms": "nan"}, "ignored retry-after-ms of nan: not a finite number"),
        ({"Retry-After": "300000000000"}, "ignored Retry-After of 300000000000 s: more than a day"),
        ({"Retry-After": "-7"}, "ignored Retry-After of -7 s: negative"),
        ({"Retry-After": "1e309"}, "ignored Retry-After of inf: not a finite number"),
    ],
)
def test_an_absurd_retry_after_is_ignored_so_backoff_applies(
    headers: dict[str, str], why: str
) -> None:
    # Regression: `retry-after-ms: inf` stored the item's due time as infinity.
    failure = classify(status_error(503, headers), NOW)
    assert (failure.retryable, failure.retry_after, failure.ignored) == (True, None, why)


def test_retry_after_as_an_http_date_past_the_year_9999_is_ignored() -> None:
    failure = classify(status_error(429, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}), NOW)
    assert failure.retry_after is None
    assert failure.ignored is not None


def test_retry_after_as_a_date_already_past_means_now() -> None:
    when = email.utils.formatdate(NOW - 90, usegmt=True)
    failure = classify(status_error(503, {"Retry-After": when}), NOW)
    assert (failure.retry_after, failure.ignored) == (0.0, None)


@pytest.mark.parametrize(
    ("wait", "why"),
    [
        (math.inf, "ignored the task's retry_after of inf: not a finite number"),
        (math.nan, "ignored the task's retry_after of nan: not a finite number"),
        (-1, "ignored the task's retry_after of -1 s: negative"),
        (10**400, "ignored the task's retry_after of inf: not a finite number"),
        (3e11, "ignored the task's retry_after of 300000000000 s: more than a day"),
        ("30", "ignored the task's retry_after: not a number (str)"),
    ],
)
def test_an_absurd_wait_from_the_task_is_ignored(wait: Any, why: str) -> None:
    failure = classify(Retryable("busy", retry_after=wait), NOW)
    assert (failure.retryable, failure.retry_after, failure.ignored) == (True, None, why)


def test_a_sane_wait_from_the_task_is_kept_and_nothing_is_noted() -> None:
    failure = classify(Retryable("busy", retry_after=86_400), NOW)
    assert (failure.retry_after, failure.ignored) == (86_400, None)


def test_an_sdk_error_with_an_absurd_wait_is_retried_with_backoff() -> None:
    failure = classify(FakeSDKError(429, {"Retry-After": "inf"}), NOW)  # names in any case
    assert (failure.retryable, failure.retry_after) == (True, None)
    assert failure.ignored == "ignored Retry-After of inf: not a finite number"


def test_an_sdk_error_with_numbers_for_headers_is_read() -> None:
    exc = FakeSDKError(429, {})
    exc.response.headers = {"retry-after": 3}
    assert classify(exc, NOW).retry_after == 3.0


def test_an_exception_whose_attributes_raise_is_still_classified() -> None:
    class Odd(Exception):
        @property
        def response(self) -> Any:
            raise RuntimeError("no")

        def __str__(self) -> str:
            raise RuntimeError("no")

    failure = classify(Odd(), NOW)
    assert (failure.retryable, failure.message) == (False, "Odd")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After-Ms": "250"}, 0.25),
        ({"retry-after": "inf"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_seconds_reads_any_mapping(headers: Any, expected: float | None) -> None:
    assert retry_after_seconds(headers, NOW) == expected
