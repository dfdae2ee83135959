"""Who may use the server: the token, event-stream tickets, and checks on every request.

* **Token.** Bound to a loopback address, ``serve`` needs no token (one may be given);
  bound to any other address it refuses to start without one. With a token, every
  ``/api`` and ``/metrics`` request carries ``Authorization: Bearer TOKEN`` (401 without
  it); pages and static files carry no data and need none (the page asks for the token
  once and keeps it in ``sessionStorage``). Comparisons take constant time.
* **Tickets.** A browser's ``EventSource`` cannot send a header, so an event stream takes
  ``?ticket=...`` instead: an HMAC, under a key made when the server starts, of the
  stream's scope (a job name, or ``*``) and an expiry two minutes ahead, handed out by
  ``POST /api/tickets`` to a caller holding the token. A ticket opens one kind of
  read-only stream, for two minutes, on this server process only.
* **Browsers on other sites.** State-changing requests whose ``Origin`` (or
  ``Sec-Fetch-Site``) says they come from another site are refused (403), and a server
  bound to loopback answers only to loopback host names (421 otherwise), so neither a
  page on another site nor DNS rebinding can drive a dashboard that has no token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Gate", "Guard", "is_loopback"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TICKET_SECONDS = 120.0
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_EVENTS = re.compile(r"^/api/(?:jobs/([^/]+)/)?events$")
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """The token (if any) and the tickets of event streams."""

    def __init__(self, token: str | None, *, ticket_seconds: float = TICKET_SECONDS) -> None:
        self.token = token or None
        self.ticket_seconds = ticket_seconds
        self._key = secrets.token_bytes(32)

    @property
    def required(self) -> bool:
        return self.token is not None

    def bearer_ok(self, authorization: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def ticket(self, scope: str, now: float | None = None) -> str:
        """A ticket for the event stream of ``scope`` (a job name, or ``*``)."""
        expires = int((time.time() if now is None else now) + self.ticket_seconds)
        return f"{expires}.{self._sign(scope, expires)}"

    def ticket_ok(self, ticket: str, scope: str, now: float | None = None) -> bool:
        expires_text, _, signature = ticket.partition(".")
        if not expires_text.isdigit():
            return False
        expires = int(expires_text)
        if expires < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(signature, self._sign(scope, expires))

    def _sign(self, scope: str, expires: int) -> str:
        message = f"{scope}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


class Gate:
    """ASGI middleware: host and origin checks, the token, and security headers."""

    def __init__(self, app: ASGIApp, guard: Guard, *, loopback_only: bool) -> None:
        self.app = app
        self.guard = guard
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        path: str = scope["path"]
        if self.loopback_only and not is_loopback(_hostname(host)):
            await _refuse(send, 421, "this server answers only to 127.0.0.1 or localhost")
            return
        if scope["method"] in _UNSAFE and _cross_site(headers, host):
            await _refuse(send, 403, "a request from another site was refused")
            return
        guarded = path.startswith("/api/") or path == "/metrics"
        if (
            self.guard.required
            and guarded
            and not self.guard.bearer_ok(headers.get("authorization"))
            and not self._ticket_ok(path, scope.get("query_string", b""))
        ):
            await _refuse(send, 401, "a token is needed (Authorization: Bearer ...)", bearer=True)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                types = [v for k, v in message.get("headers", []) if k.lower() == b"content-type"]
                if any(t.startswith(b"text/html") for t in types):
                    extra.append((b"content-security-policy", _CSP.encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _ticket_ok(self, path: str, query: bytes) -> bool:
        match = _EVENTS.match(path)
        if match is None:
            return False
        tickets = parse_qs(query.decode("latin-1")).get("ticket") or []
        scope = unquote(match.group(1)) if match.group(1) else "*"
        return any(self.guard.ticket_ok(t, scope) for t in tickets[:1])


def _hostname(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _cross_site(headers: dict[str, str], host: str) -> bool:
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False  # not sent by a browser on another site (curl, httpx, same-origin GET)
    return origin == "null" or urlsplit(origin).netloc.lower() != host.lower()


async def _refuse(send: Send, status: int, message: str, *, bearer: bool = False) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
    ]
    if bearer:
        headers.append((b"www-authenticate", b'Bearer realm="paceline"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
