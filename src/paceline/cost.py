"""What requests cost: tokens from the answers' usage fields, priced per model.

Usage is read from an answer's JSON body (:func:`read_usage`) or from the response object
an SDK returns (:func:`usage_of`: OpenAI's, Anthropic's and Google's, or the raw response
they wrap).

>>> prices = {"gpt-4o-mini": Price(input=0.15, output=0.60)}   # USD per million tokens
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Price", "Usage", "money", "read_usage", "usage_of"]


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def of(self, usage: Usage) -> float:
        return (usage.input * self.input + usage.output * self.output) / 1_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request used: ``input`` (the prompt, cache reads included) and
    ``output``; ``cache_read`` of the input were read from a prompt cache (Anthropic's
    input-tokens limit does not count them)."""

    model: str | None
    input: int
    output: int
    cache_read: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output

    @property
    def metered_input(self) -> int:
        """Input tokens as an input-tokens limit counts them."""
        return max(0, self.input - self.cache_read)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def read_usage(body: Any, request_model: str | None = None) -> Usage | None:
    """Tokens an answer reports: OpenAI ``usage.prompt_tokens``/``completion_tokens``
    (chat) or ``input_tokens``/``output_tokens`` (responses), Anthropic
    ``usage.input_tokens``/``output_tokens`` (+ cache), Gemini ``usageMetadata``."""
    if not isinstance(body, Mapping):
        return None
    model = body.get("model") or body.get("modelVersion") or request_model
    model = model if isinstance(model, str) else None
    usage = body.get("usage")
    if isinstance(usage, Mapping):
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            return Usage(
                model, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
            )
        if "input_tokens" in usage or "output_tokens" in usage:
            read = _int(usage.get("cache_read_input_tokens"))
            cached = _int(usage.get("cache_creation_input_tokens")) + read
            inputs = _int(usage.get("input_tokens")) + cached
            return Usage(model, inputs, _int(usage.get("output_tokens")), read)
    meta = body.get("usageMetadata")
    if isinstance(meta, Mapping):
        # Gemini bills thinking tokens as output.
        outputs = _int(meta.get("candidatesTokenCount")) + _int(meta.get("thoughtsTokenCount"))
        return Usage(model, _int(meta.get("promptTokenCount")), outputs)
    return None


def _fields(obj: Any, *names: str) -> dict[str, Any]:
    return {name: getattr(obj, name, None) for name in names}


def usage_of(response: Any, request_model: str | None = None) -> Usage | None:
    """Tokens an SDK's response object reports, or a JSON body's (:func:`read_usage`).

    Understood: OpenAI ``ChatCompletion`` (``usage.prompt_tokens``) and ``Response``
    (``usage.input_tokens``), Anthropic ``Message`` (``usage.input_tokens`` and cache
    tokens), google-genai ``GenerateContentResponse`` (``usage_metadata``); a raw response
    (``with_raw_response``) is parsed first; an ``httpx.Response`` is read as JSON.
    """
    if response is None:
        return None
    if isinstance(response, Mapping):
        return read_usage(response, request_model)
    parse = getattr(response, "parse", None)
    if callable(parse) and getattr(response, "headers", None) is not None:
        try:  # an SDK's raw response: the parsed object carries the usage
            return usage_of(parse(), request_model)
        except Exception:
            return None
    bare = getattr(response, "usage", None) is None
    if bare and getattr(response, "usage_metadata", None) is None:
        json = getattr(response, "json", None)
        if callable(json):  # httpx.Response and the like
            try:
                return read_usage(json(), request_model)
            except Exception:
                return None
    model = getattr(response, "model", None) or getattr(response, "model_version", None)
    model = model if isinstance(model, str) else request_model
    usage = getattr(response, "usage", None)
    if isinstance(usage, Mapping):
        return read_usage({"usage": usage, "model": model}, request_model)
    if usage is not None:
        names = (
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
        found = {k: v for k, v in _fields(usage, *names).items() if isinstance(v, int)}
        if found:
            return read_usage({"usage": found, "model": model}, request_model)
    meta = getattr(response, "usage_metadata", None)
    if meta is not None:
        fields = _fields(
            meta, "prompt_token_count", "candidates_token_count", "thoughts_token_count"
        )
        body = {
            "usageMetadata": {
                "promptTokenCount": fields["prompt_token_count"],
                "candidatesTokenCount": fields["candidates_token_count"],
                "thoughtsTokenCount": fields["thoughts_token_count"],
            },
            "model": model,
        }
        return read_usage(body, request_model)
    return None


def money(usd: float) -> str:
    """Dollars for people: cents from a cent up (``$1,234.57``), and below a cent the
    digits that matter (``$0.0042``, ``$0.000013``), never a rounded ``$0.00``."""
    if usd == 0:
        return "$0.00"
    if abs(usd) >= 0.01:
        return f"${usd:,.2f}"
    decimals = min(12, math.ceil(-math.log10(abs(usd))) + 1)  # two significant digits
    return f"${usd:.{decimals}f}"
