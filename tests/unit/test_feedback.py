"""read_feedback: what each provider's documented answers say about the key that sent them."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from paceline.feedback import Feedback, Verdict, Window, read_feedback

NOW = 1_718_893_800.0  # 2024-06-20T14:30:00Z: 07:30 in Los Angeles (PDT, UTC-7)
GEMINI_DAY_END = 1_718_953_200.0  # 2024-06-21T07:00:00Z: the next Pacific midnight


def read(
    status: int, headers: dict[str, str] | None = None, body: Any = None, **kw: Any
) -> Feedback:
    return read_feedback(status, httpx.Headers(headers or {}), body, kw.pop("now", NOW), **kw)


# -- Retry-After ----------------------------------------------------------------------------


def test_retry_after_in_seconds_rests_the_key_that_long() -> None:
    assert read(429, {"Retry-After": "20"}) == Feedback(
        Verdict.RATE_LIMITED, NOW + 20, reason="429 rate limit"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Thu, 20 Jun 2024 14:31:00 GMT", NOW + 60),
        ("Thursday, 20-Jun-24 14:32:00 GMT", NOW + 120),  # RFC 850, still valid HTTP-date
        ("Thu, 20 Jun 2024 14:00:00 GMT", NOW),  # already past: no wait
    ],
)
def test_retry_after_as_http_date(value: str, expected: float) -> None:
    assert read(429, {"Retry-After": value}).retry_at == expected


def test_retry_after_ms_is_more_precise_and_wins() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "2"}
    assert read(429, headers).retry_at == NOW + 1.5


@pytest.mark.parametrize("value", ["soon", ""])
def test_unreadable_retry_after_is_no_advice(value: str) -> None:
    assert read(429, {"Retry-After": value}) == Feedback(
        Verdict.RATE_LIMITED, None, reason="429 rate limit"
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("-5", "ignored Retry-After of -5 s: negative"),
        ("nan", "ignored Retry-After of nan: not a finite number"),
        ("inf", "ignored Retry-After of inf: not a finite number"),
        ("1e309", "ignored Retry-After of inf: not a finite number"),
        ("86401", "ignored Retry-After of 86401 s: more than a day"),
    ],
)
def test_absurd_retry_after_is_no_advice_and_is_noted(value: str, why: str) -> None:
    assert read(429, {"Retry-After": value}) == Feedback(
        Verdict.RATE_LIMITED, None, reason="429 rate limit", ignored=why
    )


# -- OpenAI ---------------------------------------------------------------------------------

OPENAI_OK = {
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-limit-tokens": "160000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-remaining-tokens": "159976",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-reset-tokens": "9ms",
}


def test_openai_success_announces_per_minute_windows_and_usage() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 14, "total_tokens": 24}
    fb = read(200, OPENAI_OK, {"object": "chat.completion", "usage": usage})
    assert fb == Feedback(
        Verdict.OK,
        None,
        windows=(
            Window(
                "requests", 5000, 4999, pytest.approx(NOW + 0.012), 60.0, "requests", False, 0.001
            ),
            Window(
                "tokens", 160000, 159976, pytest.approx(NOW + 0.009), 60.0, "tokens", False, 0.001
            ),
        ),
        tokens_used=24,
        input_used=10,
        output_used=14,
        charged_up_front=True,  # OpenAI counts max_tokens when it admits the request
    )


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1m30.5s", 90.5),
        ("2h1m", 7260.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("7", 7.0),  # Azure OpenAI sends bare seconds
    ],
)
def test_openai_resets_are_go_durations(duration: str, seconds: float) -> None:
    fb = read(200, {"x-ratelimit-reset-requests": duration})
    assert fb.windows[0].reset_at == pytest.approx(NOW + seconds)


@pytest.mark.parametrize("duration", ["soon", "1x", "-1s", "s", "1m-3s"])
def test_unreadable_go_duration_leaves_no_reset(duration: str) -> None:
    fb = read(200, {"x-ratelimit-reset-requests": duration, "x-ratelimit-limit-requests": "60"})
    assert fb.windows == (Window("requests", 60, None, None, 60.0, "requests", False),)


@pytest.mark.parametrize("rounding", ["floor", "round"])
@pytest.mark.parametrize("used", [0.4, 1.3, 2.0, 2.6, 5.5, 37.2])
def test_a_minute_bucket_reads_as_a_minute_whatever_its_whole_remaining(
    rounding: str, used: float
) -> None:
    # 600 a minute refill 10 a second: ``used`` (true, fractional) is full again after
    # used / 10 s; the provider says what is left as a whole number (floored or rounded).
    left = 600 - used
    remaining = int(left) if rounding == "floor" else round(left)
    reset_ms = round(used / 10 * 1000)
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": f"{reset_ms}ms",
    }
    (window,) = read(200, headers).windows
    assert window.period in (60.0, None)  # never a length of its own (45 s, 90 s)


def test_openai_daily_limit_shows_itself_by_its_reset() -> None:
    # A bucket of 10,000 a day is full again 8.64 s after one request; one of 10,000 a
    # minute after 6 ms. The window is read from the reset, not assumed per minute.
    rpd = {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "8.64s",
        "x-ratelimit-limit-tokens": "2000000",
        "x-ratelimit-remaining-tokens": "1999000",
        "x-ratelimit-reset-tokens": "43.2s",
    }
    requests, tokens = read(200, rpd).windows
    assert (requests.period, tokens.period) == (86_400.0, 86_400.0)
    rpm = {**rpd, "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "30ms"}
    requests, tokens = read(200, rpm).windows
    assert (requests.period, tokens.period) == (60.0, 60.0)
    # OpenAI's documented example: a 6m0s reset for 16 tokens fits no bucket; it is the end
    # of a window at least that long.
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    requests, tokens = read(200, headers).windows
    assert (requests.period, tokens.period) == (60.0, 3_600.0)
    # A reset within the minute that no bucket explains is a per-minute window.
    rpm = {
        "x-ratelimit-limit-requests": "5000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-reset-requests": "45s",
    }
    assert read(200, rpm).windows[0].period == 60.0


@pytest.mark.parametrize("used", [1, 5, 40, 300, 599])
def test_a_sliding_window_whose_reset_is_its_newest_request_leaving_is_per_minute(
    used: int,
) -> None:
    # A provider metering a sliding log says it is full again when its newest request
    # leaves: about a minute ahead, however much is used.
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": str(600 - used),
        "x-ratelimit-reset-requests": "59.98s",
    }
    assert read(200, headers).windows[0].period == 60.0


def test_a_reset_that_fits_two_readings_leaves_the_window_unknown() -> None:
    # 10 of 600 used, full in 60 s: a sliding minute, or a bucket of 600 an hour.
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "590",
        "x-ratelimit-reset-requests": "60s",
    }
    assert read(200, headers).windows[0].period is None


def openai_429(kind: str, message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}
    }


TPM_MESSAGE = (
    "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit "
    "30000, Used 29000, Requested 2000. Please try again in 2s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more."
)


def test_openai_429_without_retry_after_uses_the_matching_reset_header() -> None:
    headers = {
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-reset-tokens": "1.5s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-limit-tokens": "30000",
    }
    fb = read(429, headers, openai_429("tokens", TPM_MESSAGE))
    assert (fb.verdict, fb.retry_at, fb.scope) == (Verdict.RATE_LIMITED, NOW + 1.5, "minute")
    assert fb.reason == "429 rate limit (tokens per minute)"


def test_openai_429_prefers_retry_after_then_reads_the_message() -> None:
    body = openai_429("tokens", TPM_MESSAGE)
    assert read(429, {"retry-after": "3"}, body).retry_at == NOW + 3
    assert read(429, {}, body).retry_at == NOW + 2
    rpm = openai_429(
        "requests", "Rate limit reached on requests per min (RPM): Please try again in 20ms."
    )
    assert read(429, {}, rpm) == Feedback(
        Verdict.RATE_LIMITED,
        pytest.approx(NOW + 0.02),
        scope="minute",
        reason="429 rate limit (requests per minute)",
    )


def test_openai_requests_per_day_is_a_spent_quota() -> None:
    message = (
        "Rate limit reached for gpt-4o-mini in organization org-abc on requests per day (RPD): "
        "Limit 200, Used 200, Requested 1. Please try again in 7m12s."
    )
    assert read(429, {}, openai_429("requests", message)) == Feedback(
        Verdict.QUOTA_EXHAUSTED,
        NOW + 432,
        scope="day",
        reason="daily quota exhausted (requests per day)",
    )


def test_openai_insufficient_quota_parks_the_key_for_the_run() -> None:
    body = {
        "error": {
            "message": "You exceeded your current quota, please check your plan and "
            "billing details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    assert read(429, {"x-request-id": "req_1"}, body) == Feedback(
        Verdict.QUOTA_EXHAUSTED, None, reason="quota exhausted: insufficient_quota"
    )


def test_openai_invalid_key_is_disabled_without_echoing_the_message() -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-proj-AbC1***************wxyz. "
            "You can find your API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert read(401, {}, body) == Feedback(
        Verdict.KEY_INVALID, None, reason="key rejected: invalid_api_key"
    )


def test_openai_responses_api_usage() -> None:
    body = {"usage": {"input_tokens": 36, "output_tokens": 87, "total_tokens": 123}}
    assert read(200, {}, body).tokens_used == 123
    assert read(200, {}, {"usage": {"prompt_tokens": 5, "completion_tokens": 7}}).tokens_used == 12


# -- Anthropic ------------------------------------------------------------------------------

ANTHROPIC_OK = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2024-06-20T14:30:01Z",
    "anthropic-ratelimit-tokens-limit": "48000",
    "anthropic-ratelimit-tokens-remaining": "47000",
    "anthropic-ratelimit-tokens-reset": "2024-06-20T14:30:02Z",
    "anthropic-ratelimit-input-tokens-limit": "40000",
    "anthropic-ratelimit-input-tokens-remaining": "39000",
    "anthropic-ratelimit-input-tokens-reset": "2024-06-20T14:30:01.500Z",
    "anthropic-ratelimit-output-tokens-limit": "8000",
    "anthropic-ratelimit-output-tokens-remaining": "7500",
    "anthropic-ratelimit-output-tokens-reset": "2024-06-20T14:30:05Z",
}


def test_anthropic_success_announces_four_windows_and_usage_with_cache() -> None:
    usage = {
        "input_tokens": 2095,
        "output_tokens": 503,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
    }
    fb = read(200, ANTHROPIC_OK, {"type": "message", "usage": usage})
    assert fb == Feedback(
        Verdict.OK,
        None,
        windows=(
            Window("requests", 50, 49, NOW + 1, 60.0, "requests", False, 1.0),
            Window("tokens", 48000, 47000, NOW + 2, 60.0, "tokens", False, 1.0),
            Window("tokens", 40000, 39000, NOW + 1.5, 60.0, "input_tokens", False, 0.001),
            Window("tokens", 8000, 7500, NOW + 5, 60.0, "output_tokens", False, 1.0),
        ),
        tokens_used=4698,
        input_used=2195,  # cache writes count as input; cache reads do not
        output_used=503,
    )


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-06-20T14:31:00Z",
        "2024-06-20T14:31:00+00:00",
        "2024-06-20T16:31:00+02:00",
        "2024-06-20T07:31:00-07:00",
        "2024-06-20T14:31:00.000Z",
        "2024-06-20T14:31:00",  # no offset: UTC
    ],
)
def test_anthropic_resets_are_rfc3339_with_any_offset(stamp: str) -> None:
    fb = read(200, {"anthropic-ratelimit-requests-reset": stamp})
    assert fb.windows[0].reset_at == NOW + 60


ANTHROPIC_429 = {
    "type": "error",
    "error": {
        "type": "rate_limit_error",
        "message": "This request "
        "would exceed your organization's rate limit of 40,000 input tokens per minute.",
    },
}


def test_anthropic_429_rests_the_key_for_retry_after_and_names_the_spent_window() -> None:
    headers = {
        "retry-after": "17",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": "2024-06-20T14:31:00Z",
    }
    assert read(429, headers, ANTHROPIC_429) == Feedback(
        Verdict.RATE_LIMITED,
        NOW + 17,
        windows=(Window("tokens", 40000, 0, NOW + 60, 60.0, "input_tokens", False, 1.0),),
        scope="minute",
        reason="429 rate limit (input tokens per minute)",
    )
    del headers["retry-after"]  # then the spent window's reset says when
    assert read(429, headers, ANTHROPIC_429).retry_at == NOW + 60
    assert read(429, {}, ANTHROPIC_429) == Feedback(
        Verdict.RATE_LIMITED, None, scope="minute", reason="429 rate limit"
    )


def test_anthropic_overloaded_is_not_the_keys_fault() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert read(529, {"retry-after": "5"}, body) == Feedback(
        Verdict.OK, NOW + 5, reason="provider overloaded (HTTP 529)"
    )


def test_anthropic_authentication_error_disables_the_key() -> None:
    body = {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    assert read(401, {}, body).reason == "key rejected: authentication_error"


def test_anthropic_permission_error_is_about_the_request() -> None:
    body = {
        "type": "error",
        "error": {
            "type": "permission_error",
            "message": "Your API key does not have permission to use the specified resource.",
        },
    }
    assert read(403, {}, body) == Feedback(Verdict.OK, None)


def test_anthropic_billing_error_parks_the_key_for_the_run() -> None:
    body = {
        "type": "error",
        "error": {"type": "billing_error", "message": "Your credit balance is too low."},
    }
    assert read(400, {}, body) == Feedback(
        Verdict.QUOTA_EXHAUSTED, None, reason="quota exhausted: billing_error"
    )


# -- GitHub ---------------------------------------------------------------------------------

RESET = "1718896200"  # 2024-06-20T15:10:00Z
GITHUB_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"


def github_headers(remaining: str, resource: str = "core", limit: str = "5000") -> dict[str, str]:
    used = str(int(limit) - int(remaining))
    return {
        "x-ratelimit-limit": limit,
        "x-ratelimit-remaining": remaining,
        "x-ratelimit-reset": RESET,
        "x-ratelimit-used": used,
        "x-ratelimit-resource": resource,
        "x-github-request-id": "CAFE:1234",
    }


def test_github_success_announces_the_hourly_core_window() -> None:
    assert read(200, github_headers("4987")) == Feedback(
        Verdict.OK,
        None,
        windows=(Window("requests", 5000, 4987, 1_718_896_200.0, 3600.0, "core", True, 1.0),),
    )


@pytest.mark.parametrize("status", [403, 429])
def test_github_primary_limit_spent_parks_the_key_until_the_reset(status: int) -> None:
    body = {
        "message": "API rate limit exceeded for user ID 1234.",
        "documentation_url": GITHUB_DOCS,
    }
    assert read(status, github_headers("0"), body) == Feedback(
        Verdict.QUOTA_EXHAUSTED,
        1_718_896_200.0,
        windows=(Window("requests", 5000, 0, 1_718_896_200.0, 3600.0, "core", True, 1.0),),
        scope="hour",
        reason="GitHub primary rate limit exhausted (core)",
    )


def test_github_search_limit_is_per_minute() -> None:
    fb = read(
        403, github_headers("0", "search", limit="30"), {"message": "API rate limit exceeded"}
    )
    assert (fb.verdict, fb.retry_at, fb.scope) == (Verdict.RATE_LIMITED, 1_718_896_200.0, "minute")
    assert fb.windows[0].period == 60.0


SECONDARY = {
    "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you "
    "try again.",
    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
    "#about-secondary-rate-limits",
}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({**github_headers("4000"), "retry-after": "30"}, NOW + 30),
        (github_headers("4000"), NOW + 60),  # neither header: at least one minute
        (github_headers("0"), 1_718_896_200.0),  # remaining 0: until the reset
    ],
)
def test_github_secondary_limit_follows_githubs_order(
    headers: dict[str, str], expected: float
) -> None:
    fb = read(403, headers, SECONDARY)
    assert (fb.verdict, fb.retry_at, fb.scope) == (Verdict.RATE_LIMITED, expected, "secondary")
    assert fb.reason == "GitHub secondary rate limit"


def test_github_retry_after_without_message_is_a_secondary_limit() -> None:
    fb = read(429, {**github_headers("4000"), "retry-after": "45"}, None)
    assert (fb.verdict, fb.retry_at, fb.scope) == (Verdict.RATE_LIMITED, NOW + 45, "secondary")


def test_github_bad_credentials_disable_the_token() -> None:
    body = {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
    assert read(401, {"x-github-request-id": "CAFE:1"}, body) == Feedback(
        Verdict.KEY_INVALID, None, reason="key rejected: Bad credentials"
    )


def test_github_403_that_is_no_limit_fails_the_request_not_the_token() -> None:
    body = {"message": "Resource not accessible by integration", "documentation_url": GITHUB_DOCS}
    fb = read(403, github_headers("4000"), body)
    assert (fb.verdict, fb.retry_at, fb.reason) == (Verdict.OK, None, None)


@pytest.mark.parametrize("reset", [str(int(NOW) + 5), str(int(NOW * 1000) + 5000)])
def test_a_403_whose_window_is_spent_is_a_limit_whoever_sends_it(reset: str) -> None:
    # No GitHub marker: an API imitating GitHub's headers (reset in epoch s or ms).
    headers = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0",
               "x-ratelimit-reset": reset}  # fmt: skip
    fb = read(403, headers, {"message": "Forbidden"})
    assert fb.verdict in (Verdict.RATE_LIMITED, Verdict.QUOTA_EXHAUSTED)
    assert fb.retry_at == pytest.approx(NOW + 5)
    left = read(403, {**headers, "x-ratelimit-remaining": "7"}, {"message": "Forbidden"})
    assert left.verdict is Verdict.OK  # room left: the request itself was refused


# -- Gemini ---------------------------------------------------------------------------------


def gemini_429(*quota_ids: str, delay: str = "37s", value: str = "1500") -> dict[str, Any]:
    violations = [
        {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": quota_id,
            "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
            "quotaValue": value,
        }
        for quota_id in quota_ids
    ]
    return {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "You exceeded your current quota, please check your plan and "
            f"billing details. Please retry in {delay}.",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": violations},
                {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ],
        }
    }


DAILY = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
TOKENS_PER_MINUTE = "GenerateContentInputTokensPerModelPerMinute-FreeTier"


def test_gemini_daily_quota_parks_the_key_until_pacific_midnight_not_retry_delay() -> None:
    assert read(429, {}, gemini_429(DAILY)) == Feedback(
        Verdict.QUOTA_EXHAUSTED,
        GEMINI_DAY_END,
        windows=(Window("requests", 1500, None, GEMINI_DAY_END, 86_400.0, DAILY),),
        scope="day",
        reason=f"daily quota exhausted ({DAILY})",
    )


@pytest.mark.parametrize(
    ("now", "midnight"),
    [
        (1_705_320_000.0, 1_705_392_000.0),  # 2024-01-15 04:00 PST -> 01-16 08:00Z (UTC-8)
        (NOW, GEMINI_DAY_END),  # 2024-06-20 07:30 PDT -> 06-21 07:00Z (UTC-7)
        (1_718_953_140.0, GEMINI_DAY_END),  # 23:59 PDT: one minute to go
        (1_710_061_200.0, 1_710_140_400.0),  # 2024-03-10 01:00 PST: a 23-hour day
        (1_730_619_000.0, 1_730_707_200.0),  # 2024-11-03 00:30 PDT: a 25-hour day
    ],
)
def test_gemini_day_ends_at_the_next_pacific_midnight(now: float, midnight: float) -> None:
    assert read(429, {}, gemini_429(DAILY), now=now).retry_at == midnight


def test_gemini_day_zone_is_configurable() -> None:
    fb = read(429, {}, gemini_429(DAILY), day_resets_tz="UTC")
    assert fb.retry_at == 1_718_928_000.0  # 2024-06-21T00:00:00Z
    with pytest.raises(ValueError, match="unknown time zone"):
        read(429, {}, gemini_429(DAILY), day_resets_tz="Mars/Olympus_Mons")


@pytest.mark.parametrize(("delay", "seconds"), [("37s", 37.0), ("37.5s", 37.5), ("0.5s", 0.5)])
def test_gemini_per_minute_quota_rests_the_key_for_retry_delay(delay: str, seconds: float) -> None:
    assert read(429, {}, gemini_429(PER_MINUTE, delay=delay, value="15")) == Feedback(
        Verdict.RATE_LIMITED,
        NOW + seconds,
        windows=(Window("requests", 15, None, NOW + seconds, 60.0, PER_MINUTE),),
        scope="minute",
        reason="429 rate limit (requests per minute)",
    )


def test_gemini_token_quota_is_a_tokens_window() -> None:
    fb = read(429, {}, gemini_429(TOKENS_PER_MINUTE, value="1000000"))
    assert fb.windows == (Window("tokens", 1_000_000, None, NOW + 37, 60.0, TOKENS_PER_MINUTE),)
    assert fb.reason == "429 rate limit (tokens per minute)"


def test_gemini_daily_violation_wins_over_per_minute_ones() -> None:
    fb = read(429, {}, gemini_429(TOKENS_PER_MINUTE, PER_MINUTE, DAILY))
    assert (fb.verdict, fb.retry_at, fb.scope) == (Verdict.QUOTA_EXHAUSTED, GEMINI_DAY_END, "day")
    assert [w.period for w in fb.windows] == [60.0, 60.0, 86_400.0]


def test_gemini_429_without_details_reads_the_message() -> None:
    body = [
        {
            "error": {
                "code": 429,
                "status": "RESOURCE_EXHAUSTED",
                "message": "Resource exhausted. Please retry in 20.04466179s.",
            }
        }
    ]
    fb = read(429, {}, body)
    assert (fb.verdict, fb.retry_at) == (Verdict.RATE_LIMITED, pytest.approx(NOW + 20.04466179))


GEMINI_BAD_KEY = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    }
}


def test_gemini_invalid_key_comes_as_400_and_is_disabled() -> None:
    assert read(400, {}, GEMINI_BAD_KEY) == Feedback(
        Verdict.KEY_INVALID, None, reason="key rejected: API key not valid"
    )
    expired = {
        "error": {
            "code": 400,
            "message": "API key expired. Please renew the API key.",
            "status": "INVALID_ARGUMENT",
        }
    }
    assert read(400, {}, expired).reason == "key rejected: API key expired"


def test_gemini_403_about_the_key_disables_it_other_403s_do_not() -> None:
    unregistered = {
        "error": {
            "code": 403,
            "status": "PERMISSION_DENIED",
            "message": "Method "
            "doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        }
    }
    assert read(403, {}, unregistered).verdict is Verdict.KEY_INVALID
    suspended = {
        "error": {
            "code": 403,
            "status": "PERMISSION_DENIED",
            "message": "Permission denied: Consumer "
            "'api_key:AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW' has been suspended.",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "CONSUMER_SUSPENDED",
                }
            ],
        }
    }
    fb = read(403, {}, suspended)
    assert fb == Feedback(Verdict.KEY_INVALID, None, reason="key rejected: API key suspended")
    other = {
        "error": {
            "code": 403,
            "status": "PERMISSION_DENIED",
            "message": "You do not have permission to access the File abc123.",
        }
    }
    assert read(403, {}, other) == Feedback(Verdict.OK, None)


def test_gemini_usage() -> None:
    meta = {"promptTokenCount": 8, "candidatesTokenCount": 12, "totalTokenCount": 20}
    assert read(200, {}, {"candidates": [], "usageMetadata": meta}).tokens_used == 20
    meta = {"promptTokenCount": 8, "candidatesTokenCount": 12, "thoughtsTokenCount": 30}
    assert read(200, {}, {"usageMetadata": meta}).tokens_used == 50


# -- IETF RateLimit headers and X-RateLimit ------------------------------------------------


def test_ietf_structured_fields_give_one_window_per_policy() -> None:
    headers = {
        "RateLimit-Policy": '"burst";q=100;w=60, "daily";q=1000;w=86400, '
        '"bytes";q=1000000;qu="content-bytes"',
        "RateLimit": '"burst";r=50;t=30, "daily";r=0;t=3600',
    }
    assert read(200, headers).windows == (
        Window("requests", 100, 50, NOW + 30, 60.0, "burst", True, 1.0),
        Window("requests", 1000, 0, NOW + 3600, 86_400.0, "daily", True, 1.0),
    )


def test_ietf_policy_names_may_be_tokens_and_fields_may_be_split() -> None:
    headers = httpx.Headers(
        [
            ("RateLimit-Policy", "burst;q=10;w=1"),
            ("RateLimit-Policy", "hour;q=500;w=3600;pk=:cHsdsRa894=:"),
            ("RateLimit", "burst;r=0;t=1"),
            ("RateLimit", "hour;r=480;t=1200"),
        ]
    )
    fb = read_feedback(429, headers, None, NOW)
    assert fb.windows == (
        Window("requests", 10, 0, NOW + 1, 1.0, "burst", True, 1.0),
        Window("requests", 500, 480, NOW + 1200, 3600.0, "hour", True, 1.0),
    )
    assert (fb.verdict, fb.retry_at, fb.scope) == (Verdict.RATE_LIMITED, NOW + 1, None)


def test_ietf_spent_daily_policy_on_429_is_a_spent_quota() -> None:
    headers = {"RateLimit-Policy": '"daily";q=1000;w=86400', "RateLimit": '"daily";r=0;t=3600'}
    assert read(429, headers) == Feedback(
        Verdict.QUOTA_EXHAUSTED,
        NOW + 3600,
        windows=(Window("requests", 1000, 0, NOW + 3600, 86_400.0, "daily", True, 1.0),),
        scope="day",
        reason="daily quota exhausted (requests per day)",
    )


def test_ietf_older_form() -> None:
    headers = {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "50",
        "RateLimit-Reset": "30",
        "RateLimit-Policy": "10;w=1, 100;w=60",
    }
    assert read(200, headers).windows == (
        Window("requests", 100, 50, NOW + 30, 60.0, None, True, 1.0),
    )


@pytest.mark.parametrize(
    ("reset", "expected", "period"),
    [
        ("30", NOW + 30, 60.0),
        ("1718896200", 1_718_896_200.0, 3600.0),
        ("1718896200000", 1_718_896_200.0, 3600.0),
    ],
)
def test_x_ratelimit_reset_is_seconds_or_an_epoch(
    reset: str, expected: float, period: float
) -> None:
    # A fixed window: what is left, and when it resets; it is at least that long.
    headers = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    fb = read(200, headers)
    window = Window("requests", 60, 0, expected, period, None, True, 1.0)
    assert fb == Feedback(Verdict.OK, None, windows=(window,))


# -- any provider ---------------------------------------------------------------------------


def test_429_without_any_advice_leaves_the_backoff_to_the_limiter() -> None:
    assert read(429, {}, {"detail": "Too Many Requests"}) == Feedback(
        Verdict.RATE_LIMITED, None, reason="429 rate limit"
    )


def test_any_401_disables_the_key_without_quoting_the_answer() -> None:
    fb = read(401, {}, {"detail": "token abc123secretvalue0000 is revoked"})
    assert fb == Feedback(Verdict.KEY_INVALID, None, reason="key rejected (HTTP 401)")


@pytest.mark.parametrize("status", [200, 201, 204, 304, 400, 404, 409, 422, 500, 502])
def test_answers_that_say_nothing_about_the_key_are_ok(status: int) -> None:
    assert read(status, {"Retry-After": "10"}, {"error": {"message": "nope"}}).verdict is Verdict.OK


def test_5xx_passes_the_providers_retry_after_on() -> None:
    assert read(503, {"Retry-After": "10"}) == Feedback(
        Verdict.OK, NOW + 10, reason="provider overloaded (HTTP 503)"
    )
    assert read(500, {"Retry-After": "10"}) == Feedback(Verdict.OK, NOW + 10)
    assert read(404, {"Retry-After": "10"}) == Feedback(Verdict.OK, None)


def test_spent_window_on_a_success_is_information_not_a_verdict() -> None:
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    window = Window("requests", 60, 0, NOW + 60, 60.0, "requests", False, 1.0)
    assert read(200, headers) == Feedback(Verdict.OK, None, windows=(window,))


def test_header_names_are_read_case_insensitively_from_any_mapping() -> None:
    mixed = {
        "X-RateLimit-Limit-Requests": "60",
        "X-RATELIMIT-REMAINING-REQUESTS": "59",
        "retry-AFTER": "3",
    }
    from_dict = read_feedback(429, mixed, None, NOW)
    assert from_dict == read_feedback(429, httpx.Headers(mixed), None, NOW)
    assert from_dict.retry_at == NOW + 3
    assert from_dict.windows == (Window("requests", 60, 59, None, 60.0, "requests", False),)


def test_a_json_body_given_as_text_is_parsed() -> None:
    fb = read(
        401, {}, '{"message": "Bad credentials", "documentation_url": "https://docs.github.com"}'
    )
    assert fb.reason == "key rejected: Bad credentials"
    assert read(403, {"x-ratelimit-resource": "core"}, "secondary rate limit").scope == "secondary"


def test_reasons_never_carry_a_key_like_code() -> None:
    body = gemini_429("AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW")
    body["error"]["details"][0]["violations"][0]["quotaMetric"] = "sk-proj-Abc123Def456Ghi789Jkl"
    fb = read(429, {}, body)
    assert fb.reason == "429 rate limit" and fb.windows[0].name is None
    for secret in ("ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "tok-7fQ2x9LmA4pZ8rT1vB6nK3"):
        assert read(401, {}, {"error": {"code": secret}}).reason == "key rejected (HTTP 401)"
    assert read(401, {}, {"error": {"code": "invalid_api_key"}}).reason == (
        "key rejected: invalid_api_key"
    )


ODD_BODIES: list[Any] = [
    None,
    "",
    "not json",
    "[1, 2",
    "null",
    "[]",
    [],
    [1, "a"],
    42,
    3.5,
    True,
    {"error": None},
    {"error": "boom"},
    {"error": []},
    {"error": {"details": "x"}},
    {"error": {"details": [1, None]}},
    {
        "error": {
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": "x"},
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [None, {"quotaId": 5}],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": {"seconds": "x"},
                },
            ],
        }
    },
    {"error": {"message": 5, "code": ["rate_limit_exceeded"], "type": {}}},
    {"usage": {"total_tokens": "many"}},
    {"usage": {"prompt_tokens": -1, "completion_tokens": True}},
    {"usage": []},
    {"usageMetadata": {"totalTokenCount": 1e309}},
    {"message": None},
    '{"a": ' * 5000,
]
ODD_HEADERS: list[dict[str, str]] = [
    {},
    {"retry-after": "Fri, 99 Foo 2024 99:99:99 GMT", "retry-after-ms": "x"},
    {
        "x-ratelimit-limit-requests": "-1",
        "x-ratelimit-remaining-tokens": "1e400",
        "x-ratelimit-reset-tokens": "99999999999h",
    },
    {
        "anthropic-ratelimit-tokens-reset": "2024-13-45T99:00:00Z",
        "anthropic-ratelimit-requests-limit": "5.5",
    },
    {"x-ratelimit-reset": "-3", "x-ratelimit-remaining": "0", "x-ratelimit-resource": "core"},
    {"ratelimit-policy": '";;,,"q=;w', "ratelimit": ',,;;"unterminated;r=1;t=x'},
    {"ratelimit-policy": ";w=60, ;", "ratelimit": "=;=", "ratelimit-limit": ", ;"},
    {"ratelimit-limit": "abc", "ratelimit-remaining": "", "ratelimit-reset": "Tue, 31 Feb"},
]


@pytest.mark.parametrize("headers", ODD_HEADERS)
@pytest.mark.parametrize("body", ODD_BODIES)
def test_malformed_answers_never_raise(headers: dict[str, str], body: Any) -> None:
    for status in (200, 400, 401, 403, 429, 503):
        fb = read_feedback(status, headers, body, NOW)
        assert isinstance(fb.verdict, Verdict)
        assert all(w.reset_at is None or w.reset_at == w.reset_at for w in fb.windows)  # no NaN


def test_random_junk_never_raises() -> None:
    rng = random.Random(20240620)
    atoms: list[Any] = [
        None,
        True,
        -1,
        0,
        7,
        1e9,
        float("nan"),
        "",
        "0",
        "1s",
        "429",
        "tokens",
        "PerDay",
        "rate limit",
        "API key",
        "RESOURCE_EXHAUSTED",
        "rate_limit_exceeded",
    ]
    keys = [
        "error",
        "message",
        "code",
        "type",
        "status",
        "details",
        "violations",
        "@type",
        "quotaId",
        "quotaValue",
        "retryDelay",
        "usage",
        "total_tokens",
        "usageMetadata",
    ]

    def junk(depth: int) -> Any:
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(atoms)
        if rng.random() < 0.5:
            return [junk(depth - 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(keys): junk(depth - 1) for _ in range(rng.randint(0, 4))}

    names = [
        "retry-after",
        "x-ratelimit-reset-tokens",
        "ratelimit",
        "x-ratelimit-remaining",
        "anthropic-ratelimit-requests-reset",
        "x-ratelimit-resource",
    ]
    for _ in range(2000):
        headers = {rng.choice(names): str(rng.choice(atoms)) for _ in range(rng.randint(0, 4))}
        read_feedback(rng.choice([200, 401, 403, 429, 529]), headers, junk(5), NOW)


# -- no wait is infinite, absurd or negative ------------------------------------------------


def test_503_with_infinite_retry_after_ms_is_ignored_not_stored_as_infinity() -> None:
    # Regression: the item's due time became infinity and the job never finished.
    fb = read(503, {"retry-after-ms": "inf"})
    assert fb == Feedback(
        Verdict.OK,
        None,
        reason="provider overloaded (HTTP 503)",
        ignored="ignored retry-after-ms of inf: not a finite number",
    )


def test_absurd_retry_after_ms_falls_back_to_a_sane_retry_after() -> None:
    fb = read(429, {"retry-after-ms": "-1", "retry-after": "4"})
    assert (fb.retry_at, fb.ignored) == (NOW + 4, "ignored retry-after-ms of -0.001 s: negative")


def test_429_with_a_retry_after_of_ten_thousand_years_is_ignored() -> None:
    # Regression: the key was cooled past the year 9999 and the run crashed.
    fb = read(429, {"Retry-After": "300000000000"})
    assert (fb.verdict, fb.retry_at) == (Verdict.RATE_LIMITED, None)
    assert fb.ignored == "ignored Retry-After of 300000000000 s: more than a day"


def test_retry_after_http_date_beyond_a_day_is_ignored() -> None:
    fb = read(429, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"})
    assert fb.retry_at is None
    assert fb.ignored is not None
    assert fb.ignored.startswith("ignored Retry-After date ")


@pytest.mark.parametrize(
    "reset",
    [
        "1718896200",  # epoch seconds
        "1718896200000",  # epoch milliseconds
        "1718896200000000",  # epoch microseconds
        "1718896200000000000",  # epoch nanoseconds
    ],
)
def test_github_reset_as_an_epoch_in_any_unit_parks_the_key_until_then(reset: str) -> None:
    headers = {**github_headers("0"), "x-ratelimit-reset": reset}
    fb = read(
        403, headers, {"message": "API rate limit exceeded", "documentation_url": GITHUB_DOCS}
    )
    assert (fb.verdict, fb.retry_at, fb.ignored) == (Verdict.QUOTA_EXHAUSTED, 1_718_896_200.0, None)
    assert fb.windows[0].reset_at == 1_718_896_200.0


@pytest.mark.parametrize("reset", ["30000000000", "9" * 30, "1e400", "-60"])
def test_absurd_github_reset_parks_the_key_for_an_hour_at_most(reset: str) -> None:
    headers = {**github_headers("0"), "x-ratelimit-reset": reset}
    fb = read(
        429, headers, {"message": "API rate limit exceeded", "documentation_url": GITHUB_DOCS}
    )
    assert (fb.verdict, fb.retry_at, fb.scope) == (Verdict.QUOTA_EXHAUSTED, NOW + 3600, "hour")
    assert fb.windows[0].reset_at is None
    assert fb.ignored is not None
    assert fb.ignored.startswith("ignored x-ratelimit-reset")


def test_x_ratelimit_reset_of_microseconds_is_not_read_as_seconds() -> None:
    # Regression: 1.7e15 was taken for epoch milliseconds: a reset in the year 55,000.
    stamp = str(int((NOW + 30) * 1_000_000))
    fb = read(
        200, {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": stamp}
    )
    assert fb.windows[0].reset_at == pytest.approx(NOW + 30)


@pytest.mark.parametrize(
    "headers",
    [
        {"RateLimit-Policy": '"burst";q=100;w=-60', "RateLimit": '"burst";r=0;t=5'},
        {"RateLimit-Policy": '"burst";q=100;w=0', "RateLimit": '"burst";r=0;t=5'},
        {"RateLimit-Policy": '"burst";q=100;w=inf', "RateLimit": '"burst";r=0;t=5'},
        {"RateLimit-Policy": '"burst";q=100;w=1e-9', "RateLimit": '"burst";r=0;t=5'},
    ],
)
def test_a_window_that_is_not_a_positive_length_is_dropped(headers: dict[str, str]) -> None:
    # Regression: a window of w=-60 became a limit the limiter refused, failing the item.
    fb = read(429, headers)
    assert fb.windows == (Window("requests", 100, 0, NOW + 5, None, "burst", True, 1.0),)
    assert fb.retry_at == NOW + 5
    assert fb.ignored is not None
    assert fb.ignored.startswith("ignored RateLimit-Policy w")


def test_a_legacy_policy_with_a_negative_window_is_dropped() -> None:
    headers = {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "5",
        "RateLimit-Policy": "100;w=-60",
    }
    fb = read(200, headers)
    assert fb.windows == (Window("requests", 100, 5, None, None, None, True),)
    assert fb.ignored == "ignored RateLimit-Policy w of -60 s: not positive"


@pytest.mark.parametrize(
    ("t", "why"),
    [
        ("-3", "ignored RateLimit t of -3 s: negative"),
        ("inf", "ignored RateLimit t of inf: not a finite number"),
        ("1e12", "ignored RateLimit t of 1000000000000 s: more than a day"),
    ],
)
def test_absurd_ietf_reset_is_ignored(t: str, why: str) -> None:
    headers = {"RateLimit-Policy": '"daily";q=1000;w=86400', "RateLimit": f'"daily";r=0;t={t}'}
    fb = read(429, headers)
    assert fb.windows == (Window("requests", 1000, 0, None, 86_400.0, "daily", True),)
    assert (fb.verdict, fb.retry_at, fb.ignored) == (Verdict.RATE_LIMITED, None, why)


@pytest.mark.parametrize("duration", ["99999999999h", "9" * 400 + "s", "25h", "-5", "nan", "1e309"])
def test_absurd_go_duration_resets_are_ignored(duration: str) -> None:
    fb = read(200, {"x-ratelimit-reset-tokens": duration, "x-ratelimit-limit-tokens": "1000"})
    assert fb.windows == (Window("tokens", 1000, None, None, 60.0, "tokens", False),)
    assert fb.ignored is not None
    assert fb.ignored.startswith("ignored x-ratelimit-reset-tokens")


def test_absurd_wait_in_an_openai_message_is_ignored() -> None:
    body = openai_429(
        "requests", "Rate limit reached on requests per min. Please try again in 999999h."
    )
    fb = read(429, {}, body)
    assert (fb.verdict, fb.retry_at) == (Verdict.RATE_LIMITED, None)
    assert fb.ignored == "ignored the wait the message gives of 3599996400 s: more than a day"


@pytest.mark.parametrize("delay", ["999999999s", "9" * 400 + "s", "-1"])
def test_absurd_gemini_retry_delay_leaves_the_wait_to_the_limiter(delay: str) -> None:
    fb = read(429, {}, gemini_429(PER_MINUTE, delay=delay, value="15"))
    assert (fb.verdict, fb.retry_at, fb.scope) == (Verdict.RATE_LIMITED, None, "minute")
    assert fb.windows == (Window("requests", 15, None, None, 60.0, PER_MINUTE),)
    assert fb.ignored is not None
    assert fb.ignored.startswith("ignored RetryInfo retryDelay")


def test_gemini_daily_quota_still_waits_for_midnight_whatever_retry_delay_says() -> None:
    fb = read(429, {}, gemini_429(DAILY, delay="99999999999s"))
    assert (fb.verdict, fb.retry_at) == (Verdict.QUOTA_EXHAUSTED, GEMINI_DAY_END)


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("9999-12-31T23:59:59Z", None),  # past any day ahead: ignored
        ("1969-07-20T20:17:00Z", NOW),  # already past: full again now
        ("0001-01-01T00:00:00Z", NOW),
    ],
)
def test_anthropic_reset_dates_far_off_are_never_out_of_range(
    stamp: str, expected: float | None
) -> None:
    fb = read(
        200,
        {"anthropic-ratelimit-requests-reset": stamp, "anthropic-ratelimit-requests-limit": "50"},
    )
    assert fb.windows[0].reset_at == expected


def test_only_the_first_ignored_wait_is_noted() -> None:
    headers = {
        "retry-after": "inf",
        "x-ratelimit-reset-requests": "-1",
        "x-ratelimit-limit-requests": "5",
    }
    fb = read(429, headers)
    assert fb.ignored is not None
    assert fb.ignored.count("ignored") == 1


def test_counts_no_quota_could_have_are_junk() -> None:
    headers = {"x-ratelimit-limit-requests": "1e300", "x-ratelimit-remaining-requests": "5"}
    assert read(200, headers).windows == (
        Window("requests", None, 5, None, 60.0, "requests", False),
    )
