"""What every simulated provider shares: the style protocol and small wire-format helpers.

A *style* is one provider's way of speaking HTTP: where it reads the key, which rate-limit
headers it sends, how its errors look. The request flow (authenticate, meter, fault, wait,
answer) lives once in :mod:`paceline.sim.app`; each style module only formats.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from paceline.sim.limits import KeyState, Rejection

__all__ = [
    "Call",
    "Style",
    "estimate_tokens",
    "go_duration",
    "json_response",
    "mask_key",
    "read_json",
    "rfc3339",
    "stable_number",
    "summarize",
    "text_of",
]

SUMMARY_WORDS = 12


@dataclass(slots=True)
class Call:
    """A parsed request: what it costs the key and what to answer once it is admitted."""

    model: str
    tokens: int
    """Charged against the key's tokens-per-minute meter on admission."""
    usage: int
    """Tokens the answer reports as used (counted in ``/_sim/stats``)."""
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    unused: int = 0
    """Of ``tokens``, what the answer did not use: a refilling bucket gets it back once
    the answer is given (Anthropic adjusts its estimate to the output made)."""


class Style(Protocol):
    """One provider's wire format."""

    fault_statuses: tuple[int, ...]
    """Statuses an injected fault is drawn from."""

    def read_key(self, request: Request) -> str | None:
        """The key the request carries, where this provider expects it; ``None`` if absent."""
        ...

    async def parse(self, request: Request, now: float) -> Call | Response:
        """The call the request makes (``now`` dates it), or the answer to a malformed one."""
        ...

    def headers(self, state: KeyState) -> dict[str, str]:
        """Rate-limit headers for an admitted or rate-limited request."""
        ...

    def missing_key(self) -> Response:
        """The answer to a request without a key."""
        ...

    def invalid_key(self, key: str) -> Response:
        """The answer to an unknown or revoked key."""
        ...

    def rate_limited(
        self, rejection: Rejection, call: Call, state: KeyState, headers: dict[str, str]
    ) -> Response:
        """The answer to a request a meter refused."""
        ...

    def fault(self, status: int, headers: dict[str, str]) -> Response:
        """An injected server error with this status."""
        ...


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON answer (compact because the demo pushes thousands per second)."""
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status, headers, media_type="application/json")


async def read_json(request: Request) -> dict[str, Any] | None:
    """The request's JSON object, or ``None`` if the body is not one."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def mask_key(key: str) -> str:
    """The key as it may be shown anywhere: ``…`` and its last four characters."""
    return "…" + key[-4:]


def text_of(content: Any) -> str:
    """Plain text of a message's content: a string or a list of ``{"text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def estimate_tokens(text: str) -> int:
    """About four characters a token, as the providers' own rules of thumb say."""
    return (len(text) + 3) // 4


def summarize(text: str) -> str:
    """The deterministic "model output": the first words of the input, so tests can check it."""
    words = text.split()
    return "Summary: " + (" ".join(words[:SUMMARY_WORDS]) if words else "(empty)")


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's format): ``20ms``, ``1s``, ``1m30.5s``, ``6m0s``."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return text + secs + "s"


def rfc3339(epoch: float) -> str:
    """An instant as Anthropic writes its resets: ``2025-01-01T00:00:00Z``."""
    moment = dt.datetime.fromtimestamp(math.ceil(epoch), dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def stable_number(*parts: str) -> int:
    """A number derived from ``parts`` that is the same in every process (``hash()`` is not)."""
    digest = hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
