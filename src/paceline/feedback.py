"""What one HTTP answer says about the API key that sent it.

:func:`read_feedback` reads a provider's answer into a frozen :class:`Feedback`: a
:class:`Verdict` on the key, when the key may be used again, and the limit windows
(:class:`Window`) the provider announced. It is pure (``now`` is passed in) and never raises
on odd input: a malformed header or body part is ignored. ``reason`` holds fixed phrases and
identifier-like codes only, never an answer's free text: error messages may quote the key.

Every wait an answer gives goes through one gate (:class:`paceline._waits.Waits`): a wait
that is not a finite, non-negative number, or lies more than a day ahead, is ignored (the
default backoff applies), a window length that is not positive is dropped, and
``Feedback.ignored`` says what was ignored, so the user is told once.

Understood, as documented: ``Retry-After`` (seconds or HTTP-date) and ``retry-after-ms``;
OpenAI ``x-ratelimit-*-{requests,tokens}`` (Go-duration resets) and error codes; Anthropic
``anthropic-ratelimit-*`` (RFC 3339 resets; input and output tokens apart) and error types;
GitHub primary and secondary limits; Gemini ``QuotaFailure``/``RetryInfo`` (per-day quotas
reset at midnight Pacific); IETF ``RateLimit``/``RateLimit-Policy``, the older
``RateLimit-Limit`` trio, ``X-RateLimit-*``.

Two kinds of window (:attr:`Window.fixed`). OpenAI's and Anthropic's limits are buckets
refilled continuously: their reset says when the bucket is full again, so a window's length
is read from it (reset × limit ÷ used: 12 ms for one request of 5,000 is a minute, 8.64 s
for one of 10,000 a day), not assumed from the provider's name; a reset that only says
when the newest request leaves a sliding window is told apart by its size. GitHub's
``x-ratelimit-*``, the IETF fields and other ``X-RateLimit-*`` trios announce a *fixed*
window: what is left, and when it resets.

>>> fb = read_feedback(429, {"Retry-After": "20"}, None, now=1_000.0)
>>> fb.verdict, fb.retry_at
(<Verdict.RATE_LIMITED: 'rate_limited'>, 1020.0)
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._waits import Waits, epoch_or_delay, header_dict, number, retry_after, timestamp

__all__ = ["Feedback", "Verdict", "Window", "read_feedback"]


class Verdict(enum.StrEnum):
    """What an answer means for the key that sent it."""

    OK = "ok"
    """Nothing against the key: a success, or an error about the request or the provider."""
    RATE_LIMITED = "rate_limited"
    """A short-term limit: rest the key until ``retry_at`` and send the work with another."""
    QUOTA_EXHAUSTED = "quota_exhausted"
    """A long-window quota is spent: park the key until ``retry_at`` (``None``: for the run)."""
    KEY_INVALID = "key_invalid"
    """The key is revoked or invalid: disable it for the run."""


@dataclass(frozen=True, slots=True)
class Window:
    """A limit the provider announced for this key.

    ``name`` says which of several limits this is: ``requests``, ``tokens``,
    ``input_tokens``, ``output_tokens`` (OpenAI, Anthropic), the GitHub resource (``core``,
    ``search``), the IETF policy name, or the Gemini quota id. Anthropic's input and output
    token windows count only their side of a request's tokens.
    """

    unit: Literal["requests", "tokens"]
    limit: int | None
    remaining: int | None
    reset_at: float | None
    """Epoch seconds when the window is full again (a fixed one: when it resets)."""
    period: float | None
    """Window length in seconds, when known."""
    name: str | None = None
    fixed: bool | None = None
    """``True``: a fixed window, announced with what is left and when it resets (GitHub,
    IETF); ``False``: a smooth one, refilled continuously (OpenAI, Anthropic); ``None``:
    not said."""
    reset_slack: float = 0.0
    """How precisely ``reset_at`` is known: a reset in whole seconds may lie up to a second
    after the one given."""


@dataclass(frozen=True, slots=True)
class Feedback:
    """One answer, read: the verdict on the key and what the provider announced.

    ``retry_at`` is epoch seconds before which the key should not be used again; ``None``
    means no advice, except with ``QUOTA_EXHAUSTED``, where it means the quota does not come
    back by itself during the run (OpenAI ``insufficient_quota``, Anthropic
    ``billing_error``): park the key for the run. On an ``OK`` 5xx it is the provider's
    ``Retry-After``. ``scope`` is ``minute``, ``hour``, ``day`` or ``secondary`` (GitHub);
    ``tokens_used`` the usage the body reports; ``reason`` one line for the user.
    ``input_used`` and ``output_used`` are the tokens the body reports on each side, as
    the provider's input and output meters count them (Anthropic's cache reads are not
    input tokens there). ``ignored`` names the first absurd wait the answer gave (infinite,
    negative, more than a day ahead), which was ignored: tell the user once, not once per
    answer.

    Every time here is finite and at most a day ahead (a Gemini day ends at the next
    midnight in its zone: up to 25 hours on the day clocks go back).
    """

    verdict: Verdict
    retry_at: float | None
    windows: tuple[Window, ...] = ()
    scope: str | None = None
    tokens_used: int | None = None
    reason: str | None = None
    ignored: str | None = None
    input_used: int | None = None
    output_used: int | None = None
    #: The provider counts a request's tokens when it admits it, its ``max_tokens`` cap
    #: whole, and gives back none of what the answer did not use (OpenAI documents its
    #: tokens per minute so): the token meters keep what was reserved, at least.
    charged_up_front: bool = False


# verdict, retry_at, scope, reason
_Judgement = tuple[Verdict, float | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: dict[str, str]
    error: Mapping[str, Any]
    message: str
    github: bool
    windows: tuple[Window, ...]
    retry_after: float | None
    waits: Waits

    @property
    def now(self) -> float:
        return self.waits.now


def read_feedback(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    now: float,
    *,
    day_resets_tz: str = "America/Los_Angeles",
) -> Feedback:
    """Read one answer into a :class:`Feedback`; ``body`` is parsed JSON, text or ``None``.

    ``day_resets_tz`` is where a daily quota (Gemini's) resets at midnight; an unknown zone
    raises :class:`ValueError` when one is needed.
    """
    h = header_dict(headers)
    waits = Waits(now)
    data = _as_mapping(body)
    raw_error = data.get("error")
    error: Mapping[str, Any] = raw_error if isinstance(raw_error, Mapping) else {}
    texts = (error.get("message"), data.get("message"), raw_error)
    message = next((text for text in texts if isinstance(text, str)), "")
    github = any(n in h for n in ("x-ratelimit-resource", "x-github-request-id")) or (
        "github" in str(data.get("documentation_url", "")).lower()
    )
    windows = (
        *_openai_windows(h, waits),
        *_anthropic_windows(h, waits),
        *_x_ratelimit_windows(h, waits, github),
        *_ietf_windows(h, waits),
    )
    # google.rpc RetryInfo counts as much as a Retry-After header, QuotaFailure or not.
    retry_after = _first(_retry_after(h, waits), _retry_info_at(error, waits))
    answer = _Answer(status, h, error, message, github, windows, retry_after, waits)
    gemini, quota_windows = _judge_gemini(answer, day_resets_tz)
    answer = dataclasses.replace(answer, windows=(*windows, *quota_windows))
    verdict, retry_at, scope, reason = (
        _judge_key(answer)
        or _judge_billing(answer)
        or gemini
        or _judge_openai(answer)
        or _judge_github(answer)
        or _judge_status(answer)
    )
    tokens = _tokens_used(data)
    inputs, outputs = _sides_used(data)
    return Feedback(
        verdict,
        retry_at,
        answer.windows,
        scope,
        tokens,
        reason,
        waits.ignored,
        inputs,
        outputs,
        charged_up_front="x-ratelimit-limit-tokens" in h,
    )


# -- verdicts -----------------------------------------------------------------------------

_KEY_PHRASES = (  # (found in the message, said to the user): never the message itself
    ("bad credentials", "Bad credentials"),
    ("requires authentication", "Requires authentication"),
    ("api key not valid", "API key not valid"),
    ("api key expired", "API key expired"),
    ("api key not found", "API key not found"),
    ("reported as leaked", "API key reported as leaked"),
    ("unregistered callers", "no valid API key sent"),
    ("has been suspended", "API key suspended"),
    ("has not been used in project", "API not enabled for the key's project"),
)
_GEMINI_KEY_TEXT = ("api key not valid", "api key expired", "api key not found")
# ErrorInfo reasons that condemn the key (or its project) for every request, not just this one.
_KEY_REASONS = frozenset({"SERVICE_DISABLED", "CONSUMER_SUSPENDED", "CONSUMER_INVALID"})


def _judge_key(a: _Answer) -> _Judgement | None:
    reasons = [str(d.get("reason")) for d in _details(a.error, "ErrorInfo")]
    key_reason = any(r.startswith("API_KEY_") or r in _KEY_REASONS for r in reasons)
    text = a.message.lower()
    if a.status == 401:
        pass
    elif a.status == 400 and (key_reason or any(t in text for t in _GEMINI_KEY_TEXT)):
        pass  # Gemini answers a bad key with 400 INVALID_ARGUMENT, not 401
    elif a.status == 403 and a.error.get("status") == "PERMISSION_DENIED":
        if not (key_reason or "api key" in text or "unregistered callers" in text):
            return None  # a permission of this request (a model, a file), not of the key
    else:
        return None
    phrase = next((said for found, said in _KEY_PHRASES if found in text), None)
    if phrase is None:
        codes = (*reasons, a.error.get("code"), a.error.get("type"), a.error.get("status"))
        phrase = next((s for s in map(_safe, codes) if s), None)
    reason = f"key rejected: {phrase}" if phrase else f"key rejected (HTTP {a.status})"
    return Verdict.KEY_INVALID, None, None, reason


def _judge_billing(a: _Answer) -> _Judgement | None:
    # Money, not time, brings these back: no retry_at, the key is parked for the run.
    codes = (a.error.get("code"), a.error.get("type"))
    code = next((c for c in ("insufficient_quota", "billing_error") if c in codes), None)
    return (Verdict.QUOTA_EXHAUSTED, None, None, f"quota exhausted: {code}") if code else None


def _retry_info_at(error: Mapping[str, Any], waits: Waits) -> float | None:
    info = _details(error, "RetryInfo")
    # retryDelay is a protobuf Duration ("37s", "0.5s"): a Go duration too.
    delay = _go_duration(str(info[0].get("retryDelay"))) if info else None
    return waits.after(delay, "RetryInfo retryDelay")


def _judge_gemini(a: _Answer, zone: str) -> tuple[_Judgement | None, tuple[Window, ...]]:
    """A 429 with ``QuotaFailure`` violations, and the windows the violations name."""
    violations = [
        v
        for failure in _details(a.error, "QuotaFailure")
        if isinstance(failure.get("violations"), list)
        for v in failure["violations"]
        if isinstance(v, Mapping)
    ]
    if a.status != 429 or not violations:
        return None, ()
    soon = _first(_retry_info_at(a.error, a.waits), a.retry_after, _advice(a))
    midnight = _next_midnight(a.now, zone)
    windows: list[Window] = []
    for v in violations:
        quota_id, metric = str(v.get("quotaId", "")), str(v.get("quotaMetric", ""))
        text = f"{quota_id} {metric}".lower().replace("_", "")
        period = next((s for word, s in _PERIOD_WORDS if word in text), None)
        unit: Literal["requests", "tokens"] = "tokens" if "token" in text else "requests"
        reset = midnight if period == 86_400 else soon
        name = _safe(quota_id) or _safe(metric)
        windows.append(Window(unit, _count(v.get("quotaValue")), None, reset, period, name))
    daily = [w for w in windows if w.period == 86_400]
    judgement: _Judgement
    if daily:
        what = f" ({daily[0].name})" if daily[0].name else ""
        judgement = (Verdict.QUOTA_EXHAUSTED, midnight, "day", f"daily quota exhausted{what}")
    else:
        period = max((w.period for w in windows if w.period), default=None)
        scope = _SCOPES.get(period or 0)
        units = sorted({w.unit for w in windows if w.period == period})
        judgement = (Verdict.RATE_LIMITED, soon, scope, _limit_reason(scope, " and ".join(units)))
    return judgement, tuple(windows)


_PERIOD_WORDS = (("perday", 86_400.0), ("perhour", 3_600.0), ("perminute", 60.0))
_SCOPES = {60.0: "minute", 3_600.0: "hour", 86_400.0: "day"}


def _judge_openai(a: _Answer) -> _Judgement | None:
    code, kind = a.error.get("code"), a.error.get("type")
    if a.status != 429 or (code != "rate_limit_exceeded" and kind not in ("requests", "tokens")):
        return None
    text = a.message.lower()
    unit = kind if kind in ("requests", "tokens") else "tokens" if "tokens per" in text else ""
    unit = unit or "requests"
    # Free tiers also have per-day limits (RPD, TPD); the message names the one hit.
    daily = "per day" in text or "(rpd)" in text or "(tpd)" in text
    reset = next((w.reset_at for w in a.windows if w.name == unit), None)
    retry_at = _first(a.retry_after, reset, _advice(a))
    scope = "day" if daily else "minute"
    verdict = Verdict.QUOTA_EXHAUSTED if daily else Verdict.RATE_LIMITED
    return verdict, retry_at, scope, _limit_reason(scope, unit)


_GITHUB_PER_MINUTE = frozenset({"search", "code_search"})


def _judge_github(a: _Answer) -> _Judgement | None:
    if a.status not in (403, 429) or not a.github:
        return None
    remaining = _count(a.headers.get("x-ratelimit-remaining"))
    reset = _reset_time(a.headers.get("x-ratelimit-reset"), a.waits, "x-ratelimit-reset")
    text = a.message.lower()
    # GitHub's order for a secondary limit: retry-after, else the reset when remaining is
    # 0, else at least one minute.
    secondary = (
        Verdict.RATE_LIMITED,
        _first(a.retry_after, reset if remaining == 0 else None, a.now + 60.0),
        "secondary",
        "GitHub secondary rate limit",
    )
    if "secondary rate limit" in text or "abuse detection" in text:
        return secondary
    if remaining == 0:
        resource = a.headers.get("x-ratelimit-resource", "core")
        reason = f"GitHub primary rate limit exhausted ({_safe(resource) or 'core'})"
        # Without a (believable) reset, the window's length bounds the wait: it comes back.
        if resource in _GITHUB_PER_MINUTE:  # search limits are per minute, not per hour
            retry_at = _first(reset, a.retry_after, a.now + 60.0)
            return Verdict.RATE_LIMITED, retry_at, "minute", reason
        retry_at = _first(reset, a.retry_after, a.now + 3_600.0)
        return Verdict.QUOTA_EXHAUSTED, retry_at, "hour", reason
    if a.retry_after is not None or "rate limit" in text:
        return secondary
    return None  # e.g. "Resource not accessible by integration": the request's fault


def _judge_status(a: _Answer) -> _Judgement:
    # Some APIs answer a spent window with 403 (GitHub did, and its imitators do): the
    # headers saying nothing is left make it a limit, not a refusal of the request.
    spent_403 = a.status == 403 and any(w.remaining == 0 for w in a.windows)
    if a.status == 429 or spent_403:
        # Without Retry-After, the announced windows say when the spent one is full again.
        spent = [w for w in a.windows if w.remaining == 0 and w.reset_at is not None]
        latest = max(spent, key=lambda w: w.reset_at or 0.0, default=None)
        retry_at = _first(a.retry_after, latest.reset_at if latest else None, _advice(a))
        scope = _SCOPES.get(latest.period or 0) if latest else None
        if scope is None and a.error.get("type") == "rate_limit_error":
            scope = "minute"  # Anthropic's limits are all per minute
        label = ""
        if latest:  # "input tokens" says more than "tokens"
            named = latest.name or ""
            label = named.replace("_", " ") if named.endswith(("requests", "tokens")) else ""
            label = label or latest.unit
        long_window = scope in ("hour", "day")
        verdict = Verdict.QUOTA_EXHAUSTED if long_window else Verdict.RATE_LIMITED
        return verdict, retry_at, scope, _limit_reason(scope, label)
    if a.status >= 500:
        # Not the key's fault; the provider's Retry-After is still worth passing on.
        overloaded = a.status in (503, 529) or a.error.get("type") == "overloaded_error"
        reason = f"provider overloaded (HTTP {a.status})" if overloaded else None
        return Verdict.OK, a.retry_after, None, reason
    return Verdict.OK, None, None, None


def _limit_reason(scope: str | None, label: str) -> str:
    if scope == "day":
        return f"daily quota exhausted ({label} per day)" if label else "daily quota exhausted"
    if scope and label:
        return f"429 rate limit ({label} per {scope})"
    return "429 rate limit"


# -- windows ------------------------------------------------------------------------------


def _openai_windows(h: dict[str, str], waits: Waits) -> list[Window]:
    out = []
    for unit in ("requests", "tokens"):
        limit = _count(h.get(f"x-ratelimit-limit-{unit}"))
        remaining = _count(h.get(f"x-ratelimit-remaining-{unit}"))
        name = f"x-ratelimit-reset-{unit}"
        text = h.get(name)
        reset = waits.delay(_go_duration(text), name)
        quantum = _duration_quantum(text) if reset is not None else 0.0
        # Per minute (RPM, TPM) or per day (RPD, TPD): the reset says which.
        period = smooth_period(limit, remaining, reset, quantum)
        reset_at = None if reset is None else waits.now + reset
        out += _announced(unit, limit, remaining, reset_at, period, unit, False, quantum)
    return out


def _anthropic_windows(h: dict[str, str], waits: Waits) -> list[Window]:
    out = []
    for name in ("requests", "tokens", "input-tokens", "output-tokens"):
        prefix = f"anthropic-ratelimit-{name}-"
        limit, remaining = _count(h.get(prefix + "limit")), _count(h.get(prefix + "remaining"))
        unit: Literal["requests", "tokens"] = "requests" if name == "requests" else "tokens"
        # Anthropic's limits are token buckets refilled continuously; the reset (RFC 3339,
        # to the second or finer) says when one is full again.
        text = h.get(prefix + "reset")
        reset_at = waits.until(timestamp(text), prefix + "reset")
        quantum = _stamp_quantum(text) if reset_at is not None else 0.0
        reset = None if reset_at is None else reset_at - waits.now
        period = smooth_period(limit, remaining, reset, quantum)
        label = name.replace("-", "_")
        out += _announced(unit, limit, remaining, reset_at, period, label, False, quantum)
    return out


#: Window lengths providers use; a length read from an answer is one of these when the
#: answer's precision allows, else taken as it is (when precise) or left unknown.
_WINDOWS = (1.0, 60.0, 3_600.0, 86_400.0)
_FIT = 1.15  # how far a length read from one answer may be off the window it names


def smooth_period(
    limit: int | None,
    remaining: int | None,
    reset: float | None,
    quantum: float,
    default: float = 60.0,
) -> float | None:
    """A smooth window's length, from what one answer says: ``reset`` seconds until the
    limit is full again, known to ``quantum``.

    A bucket refilled at ``limit`` per window is full again after used × window ÷ limit:
    so the window is reset × limit ÷ used. A sliding log (a window that holds the last
    minute's requests) is full again when its newest request leaves: the reset is then
    about the window itself. When the two readings name different windows the answer
    does not say (``None``: the next one will); when it says too little (nothing used
    yet, a reset coarser than it), ``default``. A reset no bucket could explain (one
    request of 5,000 full again in 45 s) is a window's end: the shortest usual window
    that holds it.

    >>> smooth_period(5000, 4999, 0.012, 0.001), smooth_period(10_000, 9_999, 8.64, 0.01)
    (60.0, 86400.0)
    """
    if limit is None or remaining is None or reset is None or remaining >= limit:
        return default
    used = limit - remaining
    # ``remaining`` is a whole number (floored, or rounded) of what is truly left: what
    # was used lies between used - 1/2 and used + 1, and the window with it.
    low = max(0.0, reset - quantum) * limit / (used + 1)
    high = (reset + quantum) * limit / max(0.5, used - 0.5)
    bucket = [w for w in _WINDOWS if low / _FIT <= w <= high * _FIT]
    log = []
    if reset >= 5 * quantum:  # the reset is precise enough to be the window itself
        log = [w for w in _WINDOWS if w / _FIT <= reset <= w + quantum]
    if bucket and log:
        return bucket[0] if bucket == log else None
    if log:
        return log[0]
    if len(bucket) == 1:
        return bucket[0]
    if bucket:
        return default if default in bucket else None
    if low > _WINDOWS[-1] * _FIT:
        # No bucket refills that slowly: the reset is when a window ends, and the window
        # is at least that long.
        return fixed_period(reset) or default
    if low > 0 and high / low < 1.3:  # precise, and none of the usual lengths
        return float(f"{(low + high) / 2:.2g}")
    return default


def fixed_period(reset: float | None, known: float | None = None) -> float | None:
    """A fixed window's length: ``known`` (the answer named it: GitHub's resource, an IETF
    policy's ``w``), else the shortest usual length that holds the reset (a reset within
    the next second and a half says too little)."""
    if known is not None or reset is None or reset < 1.5:
        return known
    return next((w for w in _WINDOWS if reset <= w * 1.01), None)


def _x_ratelimit_windows(h: dict[str, str], waits: Waits, github: bool) -> list[Window]:
    resource = h.get("x-ratelimit-resource")
    known = None
    if github:  # GitHub's windows are an hour, except search's
        known = 60.0 if resource in _GITHUB_PER_MINUTE else 3_600.0
    limit, remaining, reset_at = _trio(h, "x-ratelimit-", waits)
    reset = None if reset_at is None else reset_at - waits.now
    period = fixed_period(reset, known)
    slack = _seconds_quantum(_first_item(h.get("x-ratelimit-reset"))) if reset_at else 0.0
    name = _safe(resource)
    return _announced("requests", limit, remaining, reset_at, period, name, True, slack)


_IETF_UNITS: dict[str | None, Literal["requests", "tokens"]] = {
    None: "requests",  # the draft's default quota unit
    "requests": "requests",
    "tokens": "tokens",  # not registered, but what an LLM gateway would send
}


def _ietf_windows(h: dict[str, str], waits: Waits) -> list[Window]:
    policies: dict[str, dict[str, str]] = {}
    legacy: list[tuple[int, float | None]] = []  # older drafts: RateLimit-Policy: 100;w=60
    for item, params in _sf_list(h.get("ratelimit-policy")):
        if (quota := _count(item)) is not None:
            legacy.append((quota, waits.period(number(params.get("w")), "RateLimit-Policy w")))
        else:
            policies[item] = params
    current = dict(_sf_list(h.get("ratelimit")))
    out = []
    for name in dict.fromkeys([*policies, *current]):
        policy, state = policies.get(name, {}), current.get(name, {})
        unit = _IETF_UNITS.get(policy.get("qu"))
        if unit is None:
            continue  # content-bytes, concurrent-requests: nothing the limiter meters
        reset_at = waits.after(number(state.get("t")), "RateLimit t")
        limit, remaining = _count(policy.get("q")), _count(state.get("r"))
        period = waits.period(number(policy.get("w")), "RateLimit-Policy w")
        if "w" not in policy and reset_at is not None:  # (a w given but absurd: unknown)
            period = fixed_period(reset_at - waits.now)
        slack = _seconds_quantum(state.get("t")) if reset_at is not None else 0.0
        out.append(Window(unit, limit, remaining, reset_at, period, name, True, slack))
    limit, remaining, reset_at = _trio(h, "ratelimit-", waits)
    periods = [w for q, w in legacy if q == limit] or [w for _, w in legacy[:1]]
    period = periods[0] if periods else None
    if not legacy and reset_at is not None:
        period = fixed_period(reset_at - waits.now)
    slack = _seconds_quantum(_first_item(h.get("ratelimit-reset"))) if reset_at else 0.0
    out += _announced("requests", limit, remaining, reset_at, period, None, True, slack)
    if limit is None and remaining is None and reset_at is None:
        out += [Window("requests", q, None, None, w, None, True) for q, w in legacy]
    return out


def _trio(
    h: dict[str, str], prefix: str, waits: Waits
) -> tuple[int | None, int | None, float | None]:
    """``{prefix}limit``, ``-remaining``, ``-reset``: X-RateLimit-* and older RateLimit-*."""
    limit = _count(_first_item(h.get(prefix + "limit")))
    remaining = _count(_first_item(h.get(prefix + "remaining")))
    reset = _reset_time(_first_item(h.get(prefix + "reset")), waits, prefix + "reset")
    return limit, remaining, reset


def _announced(
    unit: Literal["requests", "tokens"],
    limit: int | None,
    remaining: int | None,
    reset_at: float | None,
    period: float | None,
    name: str | None = None,
    fixed: bool | None = None,
    slack: float = 0.0,
) -> list[Window]:
    """The window, if the headers said anything about it."""
    if limit is None and remaining is None and reset_at is None:
        return []
    return [Window(unit, limit, remaining, reset_at, period, name, fixed, slack)]


def _decimals_quantum(text: str) -> float:
    digits = text.partition(".")[2]
    digits = "".join(c for c in digits if c.isdigit())
    return 10.0 ** -len(digits) if digits else 1.0


def _seconds_quantum(text: str | None) -> float:
    """How precise a number of (epoch) seconds is: 1 s for a whole number."""
    if text is None:
        return 0.0
    return _decimals_quantum(text.strip())


def _duration_quantum(text: str | None) -> float:
    """How precise a Go duration is: ``12ms`` to the millisecond, ``8.64s`` to 10 ms."""
    if text is None:
        return 0.0
    parts = _GO_PART.findall(text)
    if not parts:
        return _decimals_quantum(text)
    digits, unit = parts[-1]
    return _decimals_quantum(digits) * _GO_UNITS[unit]


def _stamp_quantum(text: str | None) -> float:
    """How precise an RFC 3339 time is: to the second unless it has a fraction."""
    if text is None:
        return 0.0
    found = re.search(r":\d\d\.(\d+)", text)
    return 10.0 ** -len(found.group(1)) if found else 1.0


# -- parsing ------------------------------------------------------------------------------


def _next_midnight(now: float, zone_name: str) -> float:
    try:
        zone = ZoneInfo(zone_name)  # cached by zoneinfo itself
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone_name!r}") from None
    # Midnight on the local calendar, so the zone's DST offset (UTC-8 or UTC-7) applies.
    tomorrow = datetime.fromtimestamp(now, zone).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(), tzinfo=zone).timestamp()


def _as_mapping(body: Any) -> Mapping[str, Any]:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return {"message": body}  # plain text still says "secondary rate limit"
    if isinstance(body, list) and body and isinstance(body[0], Mapping) and "error" in body[0]:
        body = body[0]  # Gemini's streaming endpoints wrap the error in a one-item array
    return body if isinstance(body, Mapping) else {}


def _details(error: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    """google.rpc details of one ``@type`` (``QuotaFailure``, ``RetryInfo``, ``ErrorInfo``)."""
    details = error.get("details")
    if not isinstance(details, list):
        return []
    suffix = "." + kind
    return [d for d in details if isinstance(d, Mapping) and str(d.get("@type")).endswith(suffix)]


def _tokens_used(data: Mapping[str, Any]) -> int | None:
    for key, total, parts in _USAGE:
        usage = data.get(key)
        if isinstance(usage, Mapping):
            if (count := _count(usage.get(total))) is not None:
                return count
            found = [c for p in parts if (c := _count(usage.get(p))) is not None]
            return sum(found) if found else None
    return None


_USAGE = (
    # OpenAI (chat: prompt/completion; responses: input/output), Anthropic (+ cache tokens)
    ("usage", "total_tokens", ("prompt_tokens", "completion_tokens", "input_tokens",
                               "output_tokens", "cache_creation_input_tokens",
                               "cache_read_input_tokens")),
    ("usageMetadata", "totalTokenCount", ("promptTokenCount", "candidatesTokenCount",
                                          "thoughtsTokenCount", "toolUsePromptTokenCount")),
)  # fmt: skip


def _sides_used(data: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Input and output tokens as the providers' input and output meters count them."""
    usage = data.get("usage")
    if isinstance(usage, Mapping):
        inputs = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        outputs = _count(usage.get("completion_tokens", usage.get("output_tokens")))
        # Anthropic counts cache writes as input tokens; cache reads do not count.
        created = _count(usage.get("cache_creation_input_tokens"))
        if inputs is not None and created is not None and "input_tokens" in usage:
            inputs += created
        return inputs, outputs
    meta = data.get("usageMetadata")
    if isinstance(meta, Mapping):
        return _count(meta.get("promptTokenCount")), _count(meta.get("candidatesTokenCount"))
    return None, None


def _retry_after(h: dict[str, str], waits: Waits) -> float | None:
    seconds = retry_after(h, waits)
    return None if seconds is None else waits.now + seconds


def _advice(a: _Answer) -> float | None:
    """The wait a message spells out: "Please try again in 6m0s", "Please retry in 37.5s"."""
    found = re.search(
        r"(?:try again|retry) in ((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+)", a.message
    )
    delay = _go_duration(found.group(1)) if found else None
    return a.waits.after(delay, "the wait the message gives")


_GO_DURATION = re.compile(r"(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def _go_duration(text: str | None) -> float | None:
    """Seconds in a Go duration (``1m30.5s``); a bare number is seconds (Azure sends those).

    Not checked here: ``99999999999h`` gives its (absurd) value, for :class:`Waits` to judge.
    """
    if text is None:
        return None
    if _GO_DURATION.fullmatch(text):
        return sum(float(n) * _GO_UNITS[u] for n, u in _GO_PART.findall(text))
    return number(text)


def _reset_time(text: str | None, waits: Waits, what: str) -> float | None:
    """A reset as epoch seconds (or ms, µs, ns), delta-seconds or a date, checked."""
    if text is None:
        return None
    value = number(text)
    if value is None:
        return waits.until(timestamp(text), what)
    if not math.isfinite(value) or value < 0:
        return waits.delay(value, what)  # ignored, and noted
    return waits.until(epoch_or_delay(value, waits.now), what)


def _sf_list(value: str | None) -> list[tuple[str, dict[str, str]]]:
    """An HTTP structured-field list as ``(item, parameters)``, quotes removed; lenient."""
    members = []
    for member in _split(value or "", ","):
        item, *params = _split(member, ";") or [""]
        pairs = (param.partition("=") for param in params)
        members.append((_unquote(item), {k.lower(): _unquote(v) for k, _, v in pairs}))
    return [(item, params) for item, params in members if "=" not in item]


def _split(text: str, separator: str) -> list[str]:
    """Split at ``separator`` outside quoted strings."""
    pattern = rf'(?:"(?:[^"\\]|\\.)*"|[^"{separator}])+'
    return [part.strip() for part in re.findall(pattern, text) if part.strip()]


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _first_item(text: str | None) -> str | None:
    """The first member of a list field without parameters: ``100`` of ``100, 100;w=60``."""
    return None if text is None else text.split(",", 1)[0].split(";", 1)[0].strip()


_MAX_COUNT = 1e15  # no quota counts that high: a number beyond is junk, not a limit


def _count(value: object) -> int | None:
    """A non-negative whole number; Azure's ``-1`` ("no data"), ``inf`` and junk give ``None``."""
    found = number(value)
    if found is None or not 0 <= found <= _MAX_COUNT or not found.is_integer():
        return None
    return int(found)


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.:/-]{0,79}")
_SECRET_PREFIXES = ("sk-", "sk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "aiza")
_MIXED_RUN = re.compile(r"(?=[A-Za-z0-9]{20,})(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[A-Za-z])")


def _safe(value: object) -> str | None:
    """An identifier-like code fit for ``reason`` (``invalid_api_key``), never key-like."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        return None
    # Defence in depth: a code never starts like a key, nor mixes letters and digits at length.
    if value.lower().startswith(_SECRET_PREFIXES) or _MIXED_RUN.search(value):
        return None
    return value
