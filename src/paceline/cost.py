"""What requests cost: tokens from the answers' usage fields, priced per model.

>>> prices = {"gpt-4o-mini": Price(input=0.15, output=0.60)}   # USD per million tokens
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Price", "Usage", "money", "read_usage"]


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def of(self, usage: Usage) -> float:
        return (usage.input * self.input + usage.output * self.output) / 1_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    model: str | None
    input: int
    output: int


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def read_usage(body: Any, request_model: str | None = None) -> Usage | None:
    """Tokens an answer reports: OpenAI ``usage.prompt_tokens``/``completion_tokens``,
    Anthropic ``usage.input_tokens``/``output_tokens``, Gemini ``usageMetadata``."""
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
            cached = _int(usage.get("cache_creation_input_tokens")) + _int(
                usage.get("cache_read_input_tokens")
            )
            return Usage(
                model, _int(usage.get("input_tokens")) + cached, _int(usage.get("output_tokens"))
            )
    meta = body.get("usageMetadata")
    if isinstance(meta, Mapping):
        return Usage(
            model, _int(meta.get("promptTokenCount")), _int(meta.get("candidatesTokenCount"))
        )
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
