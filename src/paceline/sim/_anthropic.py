"""Anthropic's wire format: ``POST /v1/messages`` with ``x-api-key: KEY``.

Headers follow https://docs.anthropic.com/en/api/rate-limits: ``anthropic-ratelimit-*-reset``
is the RFC 3339 instant the meter is full again. The sim keeps one tokens meter, charged with
input tokens plus ``max_tokens`` (Anthropic's own estimate before generating), so it sends the
combined ``-tokens-`` headers and not the input/output split.
"""

from __future__ import annotations

import math
import secrets

from starlette.requests import Request
from starlette.responses import Response

from paceline.sim._wire import (
    Call,
    estimate_tokens,
    json_response,
    read_json,
    rfc3339,
    summarize,
    text_of,
)
from paceline.sim.limits import KeyState, Rejection

__all__ = ["AnthropicStyle"]

_UNITS = {
    "rpm": "requests per minute",
    "rph": "requests per hour",
    "rpd": "requests per day",
    "tpm": "tokens per minute",
    "concurrency": "concurrent requests",
}
_FAULTS = {
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return json_response(body, status, headers)


class AnthropicStyle:
    """Messages the way Anthropic answers them."""

    fault_statuses: tuple[int, ...] = (500, 529)

    def read_key(self, request: Request) -> str | None:
        """The ``x-api-key`` header."""
        return request.headers.get("x-api-key", "").strip() or None

    async def parse(self, request: Request, now: float) -> Call | Response:
        """Messages in (``max_tokens`` required, as Anthropic requires it), a summary out."""
        body = await read_json(request)
        if body is None:
            return _error(400, "invalid_request_error", "Request body is not valid JSON")
        messages = body.get("messages")
        max_tokens = body.get("max_tokens")
        if not isinstance(messages, list) or not messages:
            return _error(400, "invalid_request_error", "messages: Field required")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        model = body.get("model")
        model = model if isinstance(model, str) and model else "claude-sonnet-4-5"
        texts = [text_of(body.get("system"))]
        texts += [text_of(m.get("content")) for m in messages if isinstance(m, dict)]
        user = [
            text_of(m.get("content"))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user"
        ]
        content = summarize(user[-1] if user else "")
        input_tokens = estimate_tokens(" ".join(texts))
        output_tokens = estimate_tokens(content)
        stop = "end_turn"
        if output_tokens > max_tokens:
            content, output_tokens, stop = content[: max_tokens * 4], max_tokens, "max_tokens"
        answer = {
            "id": "msg_sim" + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": content}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        return Call(
            model=model,
            tokens=input_tokens + max_tokens,
            usage=input_tokens + output_tokens,
            unused=max_tokens - output_tokens,
            body=answer,
        )

    def headers(self, state: KeyState) -> dict[str, str]:
        """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``."""
        headers: dict[str, str] = {}
        requests = state.rpm or state.rpd or state.rph
        for kind, window in (("requests", requests), ("tokens", state.tpm)):
            if window is not None:
                headers[f"anthropic-ratelimit-{kind}-limit"] = str(window.limit)
                headers[f"anthropic-ratelimit-{kind}-remaining"] = str(window.remaining)
                headers[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(window.resets_at)
        return headers

    def missing_key(self) -> Response:
        """Anthropic's 401 for a request without ``x-api-key``."""
        return _error(401, "authentication_error", "x-api-key header is required")

    def invalid_key(self, key: str) -> Response:
        """Anthropic's 401 ``authentication_error``."""
        return _error(401, "authentication_error", "invalid x-api-key")

    def rate_limited(
        self, rejection: Rejection, call: Call, state: KeyState, headers: dict[str, str]
    ) -> Response:
        """A 429 ``rate_limit_error`` with ``retry-after`` in whole seconds."""
        message = (
            f"This request would exceed the rate limit for your organization of "
            f"{rejection.limit} {_UNITS[rejection.meter]}. For details, refer to: "
            "https://docs.anthropic.com/en/api/rate-limits. You can see the response headers "
            "for current usage. Please reduce the prompt length or the maximum tokens "
            "requested, or try again later."
        )
        headers = dict(headers)
        if rejection.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(rejection.retry_after)))
        return _error(429, "rate_limit_error", message, headers)

    def fault(self, status: int, headers: dict[str, str]) -> Response:
        """``overloaded_error`` (529) or ``api_error`` (500)."""
        kind, message = _FAULTS.get(status, _FAULTS[500])
        return _error(status, kind, message, headers)
