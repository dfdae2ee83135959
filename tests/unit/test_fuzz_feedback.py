"""The answer parsers fed random headers and bodies: nothing escapes, no wait is absurd.

For :func:`read_feedback`: it never raises; every ``retry_at`` and window ``reset_at`` is
finite, not before ``now`` and at most a day ahead (a Gemini day ends at the next Pacific
midnight: up to 25 hours ahead on the day clocks go back); every window period is ``None``
or a finite positive length. For :func:`classify` and :func:`retry_after_seconds`: they
never raise, and a wait is ``None`` or between 0 and a day.
"""

from __future__ import annotations

import email.utils
import math
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline._waits import MAX_WAIT
from paceline.errors import Retryable
from paceline.feedback import Verdict, read_feedback
from paceline.retry import classify, retry_after_seconds

FUZZ = settings(max_examples=200, deadline=None)
EPSILON = 1e-6

NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "inf",
            "-inf",
            "nan",
            "1e309",
            "-1e309",
            "Infinity",
            "0",
            "-0",
            "1e-320",
            "9" * 400,
            "300000000000",
            "1718896200",
            "1718896200000",
            "1718896200000000",
            "-60",
            "1_0",
        ]
    ),
)
DURATIONS = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 10**20).map(str), st.floats(0, 1e20).map(lambda f: f"{f:f}")),
        st.sampled_from(["ns", "us", "µs", "ms", "s", "m", "h", "d", ""]),
    ),
    min_size=1,
    max_size=3,
).map(lambda parts: "".join(n + u for n, u in parts))
DATES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).flatmap(
    lambda d: st.sampled_from(
        [d.isoformat(), d.isoformat().replace("+00:00", "Z"), email.utils.format_datetime(d)]
    )
)
STRUCTURED = st.lists(
    st.tuples(
        st.sampled_from(['"burst"', "daily", '"q"', "", "100"]),
        st.lists(
            st.tuples(st.sampled_from(["q", "w", "r", "t", "qu", "pk"]), NUMBERS | DURATIONS),
            max_size=4,
        ),
    ),
    max_size=3,
).map(lambda items: ", ".join(i + "".join(f";{k}={v}" for k, v in p) for i, p in items))
VALUES = st.one_of(NUMBERS, DURATIONS, DATES, STRUCTURED, st.text(max_size=12))
HEADER_NAMES = st.sampled_from(
    [
        "retry-after",
        "Retry-After-Ms",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-resource",
        "x-github-request-id",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
        "ratelimit",
        "ratelimit-policy",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ]
)
HEADERS = st.dictionaries(HEADER_NAMES, VALUES, max_size=6)
ASCII_HEADERS = st.dictionaries(
    HEADER_NAMES, VALUES.filter(lambda v: v.isascii() and v.isprintable()), max_size=6
)

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | NUMBERS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
GEMINI = st.builds(
    lambda quota, value, delay, message: {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": message,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": quota, "quotaValue": value}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ],
        }
    },
    st.sampled_from(
        ["GenerateRequestsPerDayPerProjectPerModel", "TokensPerMinute", "PerHour", "x"]
    ),
    NUMBERS | JUNK,
    DURATIONS | NUMBERS | JUNK,
    DURATIONS.map(lambda d: f"Please retry in {d}.") | st.text(max_size=20),
)
OPENAI = st.builds(
    lambda kind, wait: {
        "error": {
            "message": f"Rate limit reached on {kind}. Please try again in {wait}.",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    },
    st.sampled_from(["requests per min (RPM)", "tokens per day (TPD)", "x"]),
    DURATIONS,
)
BODIES = st.one_of(st.none(), st.text(max_size=30), JUNK, GEMINI, OPENAI)
STATUSES = st.sampled_from([200, 400, 401, 403, 408, 429, 500, 503, 529]) | st.integers(100, 599)
NOW = st.floats(min_value=1e9, max_value=4e9)


def latest_allowed(now: float) -> float:
    # A day, or a Gemini day's end: the next Pacific midnight, up to 25 hours ahead.
    return now + max(MAX_WAIT, 25 * 3600.0)


@FUZZ
@given(status=STATUSES, headers=HEADERS, body=BODIES, now=NOW)
def test_read_feedback_never_raises_and_every_time_is_sane(
    status: int, headers: dict[str, str], body: Any, now: float
) -> None:
    fb = read_feedback(status, headers, body, now)

    assert isinstance(fb.verdict, Verdict)
    latest = latest_allowed(now) if fb.scope == "day" else now + MAX_WAIT
    if fb.retry_at is not None:
        assert math.isfinite(fb.retry_at)
        assert now - EPSILON <= fb.retry_at <= latest + EPSILON
    for window in fb.windows:
        if window.reset_at is not None:
            assert math.isfinite(window.reset_at)
            assert now - EPSILON <= window.reset_at <= latest_allowed(now) + EPSILON
        assert window.period is None or (math.isfinite(window.period) and window.period > 0)
        assert window.limit is None or 0 <= window.limit <= 10**15
        assert window.remaining is None or 0 <= window.remaining <= 10**15
    assert fb.ignored is None or fb.ignored.startswith("ignored ")


@FUZZ
@given(status=STATUSES, headers=ASCII_HEADERS, body=st.text(max_size=30), now=NOW)
def test_read_feedback_reads_httpx_headers_alike(
    status: int, headers: dict[str, str], body: str, now: float
) -> None:
    assert read_feedback(status, httpx.Headers(headers), body, now) == read_feedback(
        status, headers, body, now
    )


def assert_sane_wait(wait: float | None) -> None:
    assert wait is None or (math.isfinite(wait) and 0 <= wait <= MAX_WAIT)


@FUZZ
@given(status=STATUSES, headers=ASCII_HEADERS, now=NOW)
def test_classify_never_raises_and_every_wait_is_sane(
    status: int, headers: dict[str, str], now: float
) -> None:
    request = httpx.Request("GET", "https://api.example.com/v1")
    response = httpx.Response(status, headers=headers, request=request)
    failure = classify(httpx.HTTPStatusError("x", request=request, response=response), now)
    assert_sane_wait(failure.retry_after)

    sdk = Exception("sdk")
    sdk.status_code = status  # type: ignore[attr-defined]
    sdk.response = SimpleNamespace(headers=headers)  # type: ignore[attr-defined]
    assert_sane_wait(classify(sdk, now).retry_after)
    assert_sane_wait(retry_after_seconds(headers, now))


@FUZZ
@given(
    wait=st.one_of(
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.text(max_size=5),
        st.booleans(),
    ),
    now=NOW,
)
def test_a_tasks_retry_after_is_never_taken_unchecked(wait: Any, now: float) -> None:
    failure = classify(Retryable("busy", retry_after=wait), now)
    assert failure.retryable
    assert_sane_wait(failure.retry_after)
