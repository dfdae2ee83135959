"""Gemini's wire format: ``POST /v1beta/models/{model}:generateContent``.

The key comes in the ``x-goog-api-key`` header or the ``?key=`` query parameter. Gemini sends
no rate-limit headers: a 429 says which quota ran out in a ``google.rpc.QuotaFailure`` detail
and how long to wait in a ``google.rpc.RetryInfo`` one
(https://ai.google.dev/gemini-api/docs/rate-limits). Its token quota counts input tokens
only, so only the prompt is charged. A request without any key gets the 403
``PERMISSION_DENIED`` Google answers unregistered callers with.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response

from paceline.sim._wire import (
    Call,
    estimate_tokens,
    json_response,
    read_json,
    summarize,
    text_of,
)
from paceline.sim.limits import KeyState, Rejection

__all__ = ["GeminiStyle"]

_REQUESTS_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
_TOKENS_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
_QUOTAS = {
    "rpm": (_REQUESTS_METRIC, "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
    "rph": (_REQUESTS_METRIC, "GenerateRequestsPerHourPerProjectPerModel-FreeTier"),
    "rpd": (_REQUESTS_METRIC, "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
    "tpm": (_TOKENS_METRIC, "GenerateContentInputTokensPerModelPerMinute-FreeTier"),
}
_DOCS = "https://ai.google.dev/gemini-api/docs/rate-limits"
_FAULTS = {
    500: (
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
        "INTERNAL",
    ),
    503: ("The model is overloaded. Please try again later.", "UNAVAILABLE"),
}


def _error(
    status: int,
    message: str,
    code_name: str,
    details: list[object] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error: dict[str, object] = {"code": status, "message": message, "status": code_name}
    if details is not None:
        error["details"] = details
    return json_response({"error": error}, status, headers)


class GeminiStyle:
    """``generateContent`` the way the Gemini API answers it."""

    fault_statuses: tuple[int, ...] = (500, 503)

    def read_key(self, request: Request) -> str | None:
        """The ``x-goog-api-key`` header, else the ``key`` query parameter."""
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key") or ""
        return key.strip() or None

    async def parse(self, request: Request, now: float) -> Call | Response:
        """Contents in, a summary of the last content out."""
        body = await read_json(request)
        contents = body.get("contents") if body is not None else None
        if body is None or not isinstance(contents, list) or not contents:
            return _error(
                400,
                "* GenerateContentRequest.contents: contents is not specified",
                "INVALID_ARGUMENT",
            )
        model = request.path_params.get("model") or "gemini-2.0-flash"
        texts = [text_of(c.get("parts")) for c in contents if isinstance(c, dict)]
        system = body.get("systemInstruction")
        if isinstance(system, dict):
            texts.append(text_of(system.get("parts")))
        user = [
            text_of(c.get("parts"))
            for c in contents
            if isinstance(c, dict) and c.get("role", "user") == "user"
        ]
        text = summarize(user[-1] if user else "")
        prompt_tokens = estimate_tokens(" ".join(texts))
        answer_tokens = estimate_tokens(text)
        finish = "STOP"
        config = body.get("generationConfig")
        limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
        if isinstance(limit, int) and 0 < limit < answer_tokens:
            text, answer_tokens, finish = text[: limit * 4], limit, "MAX_TOKENS"
        total = prompt_tokens + answer_tokens
        answer = {
            "candidates": [
                {
                    "content": {"parts": [{"text": text}], "role": "model"},
                    "finishReason": finish,
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": answer_tokens,
                "totalTokenCount": total,
            },
            "modelVersion": model,
        }
        return Call(model=model, tokens=prompt_tokens, usage=total, body=answer)

    def headers(self, state: KeyState) -> dict[str, str]:
        """None: Gemini does not report its meters in headers."""
        return {}

    def missing_key(self) -> Response:
        """Google's 403 for callers without an API key."""
        return _error(
            403,
            "Method doesn't allow unregistered callers (callers without established "
            "identity). Please use API Key or other form of API consumer identity to call "
            "this API.",
            "PERMISSION_DENIED",
        )

    def invalid_key(self, key: str) -> Response:
        """Google's 400 ``API_KEY_INVALID``."""
        info = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
        return _error(
            400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", [info]
        )

    def rate_limited(
        self, rejection: Rejection, call: Call, state: KeyState, headers: dict[str, str]
    ) -> Response:
        """A 429 ``RESOURCE_EXHAUSTED`` naming the quota, with a ``RetryInfo`` delay."""
        details: list[object] = []
        message = "Resource has been exhausted (e.g. check quota)."
        quota = _QUOTAS.get(rejection.meter)
        if quota is not None:
            metric, quota_id = quota
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": metric,
                            "quotaId": quota_id,
                            "quotaDimensions": {"location": "global", "model": call.model},
                            "quotaValue": str(rejection.limit),
                        }
                    ],
                }
            )
            message = (
                "You exceeded your current quota, please check your plan and billing details. "
                f"For more information on this error, head to: {_DOCS}. To monitor your "
                "current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
                f"* Quota exceeded for metric: {metric}, limit: {rejection.limit}, "
                f"model: {call.model}"
            )
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more about Gemini API quotas", "url": _DOCS}],
            }
        )
        if rejection.retry_after is not None:
            delay = max(1, math.ceil(rejection.retry_after))
            if quota is not None:
                message += f"\nPlease retry in {rejection.retry_after:.3f}s."
            details.append(
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"}
            )
        return _error(429, message, "RESOURCE_EXHAUSTED", details)

    def fault(self, status: int, headers: dict[str, str]) -> Response:
        """``UNAVAILABLE`` (503, "the model is overloaded") or ``INTERNAL`` (500)."""
        message, code_name = _FAULTS.get(status, _FAULTS[500])
        return _error(status, message, code_name)
