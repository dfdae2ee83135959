"""OpenAI's wire format: ``POST /v1/chat/completions`` with ``Authorization: Bearer KEY``.

Rate-limit headers follow https://platform.openai.com/docs/guides/rate-limits: the
``x-ratelimit-reset-*`` values are Go-style durations until the meter is back to full. A 429
carries ``retry-after`` (whole seconds) and ``retry-after-ms``, which the official SDKs read.
"""

from __future__ import annotations

import math
import secrets

from starlette.requests import Request
from starlette.responses import Response

from paceline.sim._wire import (
    Call,
    estimate_tokens,
    go_duration,
    json_response,
    mask_key,
    read_json,
    summarize,
    text_of,
)
from paceline.sim.limits import KeyState, Rejection, Window

__all__ = ["OpenAIStyle"]

_RATE_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."
_METER_LABELS = {
    "rpm": "requests per min (RPM)",
    "rph": "requests per hour (RPH)",
    "rpd": "requests per day (RPD)",
    "tpm": "tokens per min (TPM)",
}
_FAULTS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json_response(body, status, headers)


class OpenAIStyle:
    """Chat completions the way OpenAI answers them."""

    fault_statuses: tuple[int, ...] = (500, 502, 503)

    def __init__(self, organization: str = "org-sim") -> None:
        self.organization = organization

    def read_key(self, request: Request) -> str | None:
        """The bearer token of the ``Authorization`` header."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        return key if scheme.lower() == "bearer" and key else None

    async def parse(self, request: Request, now: float) -> Call | Response:
        """Messages in, a summary of the last user message out."""
        body = await read_json(request)
        if body is None:
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly.)",
                "invalid_request_error",
                None,
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' is a required property", "invalid_request_error", None)
        model = body.get("model")
        model = model if isinstance(model, str) and model else "gpt-4o-mini"
        texts = [text_of(m.get("content")) for m in messages if isinstance(m, dict)]
        user = [
            text_of(m.get("content"))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user"
        ]
        content = summarize(user[-1] if user else "")
        prompt_tokens = estimate_tokens(" ".join(texts)) + 3 * len(texts)
        completion_tokens = estimate_tokens(content)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        finish = "stop"
        if isinstance(max_tokens, int) and max_tokens > 0:
            if completion_tokens > max_tokens:
                content, completion_tokens, finish = content[: max_tokens * 4], max_tokens, "length"
            # OpenAI reserves the whole max_tokens against TPM, not what is finally generated.
            charge = prompt_tokens + max_tokens
        else:
            charge = prompt_tokens + completion_tokens
        total = prompt_tokens + completion_tokens
        answer = {
            "id": "chatcmpl-sim" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(now),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": total,
            },
            "system_fingerprint": "fp_sim",
        }
        return Call(model=model, tokens=charge, usage=total, body=answer)

    def headers(self, state: KeyState) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for enforced meters."""
        headers: dict[str, str] = {}
        requests = state.rpm or state.rpd or state.rph
        for suffix, window in (("requests", requests), ("tokens", state.tpm)):
            if window is not None:
                _put(headers, suffix, window, state.now)
        return headers

    def missing_key(self) -> Response:
        """OpenAI's 401 for a request without a bearer token."""
        return _error(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
        )

    def invalid_key(self, key: str) -> Response:
        """OpenAI's 401 ``invalid_api_key``, showing only the key's last four characters."""
        return _error(
            401,
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )

    def rate_limited(
        self, rejection: Rejection, call: Call, state: KeyState, headers: dict[str, str]
    ) -> Response:
        """A 429 ``rate_limit_exceeded`` whose message names the meter, as OpenAI's does."""
        kind = "tokens" if rejection.meter == "tpm" else "requests"
        where = f"for {call.model} in organization {self.organization}"
        if rejection.meter == "concurrency":
            message = (
                f"Too many concurrent requests {where}: Limit {rejection.limit}, "
                f"In flight {rejection.used}. Please try again in 1s. {_RATE_DOCS}"
            )
        elif rejection.retry_after is None:
            message = (
                f"Request too large {where} on {_METER_LABELS[rejection.meter]}: "
                f"Limit {rejection.limit}, Requested {rejection.requested}. The input or output "
                f"tokens must be reduced in order to run successfully. {_RATE_DOCS}"
            )
        else:
            message = (
                f"Rate limit reached {where} on {_METER_LABELS[rejection.meter]}: "
                f"Limit {rejection.limit}, Used {rejection.used}, Requested "
                f"{rejection.requested}. Please try again in "
                f"{go_duration(rejection.retry_after)}. {_RATE_DOCS}"
            )
        headers = dict(headers)
        if rejection.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(rejection.retry_after)))
            headers["retry-after-ms"] = str(max(1, math.ceil(rejection.retry_after * 1000)))
        return _error(429, message, kind, "rate_limit_exceeded", headers)

    def fault(self, status: int, headers: dict[str, str]) -> Response:
        """A ``server_error`` as OpenAI sends on its bad days."""
        return _error(status, _FAULTS.get(status, _FAULTS[500]), "server_error", None, headers)


def _put(headers: dict[str, str], suffix: str, window: Window, now: float) -> None:
    headers[f"x-ratelimit-limit-{suffix}"] = str(window.limit)
    headers[f"x-ratelimit-remaining-{suffix}"] = str(window.remaining)
    headers[f"x-ratelimit-reset-{suffix}"] = go_duration(window.resets_at - now)
