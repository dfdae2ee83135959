"""``ctx.http``: an httpx client bound to the job's key pool.

Each request takes a key and a slot from the pool's limiter, carries the key the way the
pool says, and feeds the answer back (rate-limit headers, usage, 429s, rejected keys).
A 429 (or a spent quota, or a rejected key) does not reach the task: the request goes
again at once on the best other key, up to :data:`MAX_SWITCHES` times. Without a pool it
is a plain shared httpx client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from .clock import Clock
from .cost import Usage, read_usage
from .feedback import Feedback, Verdict, read_feedback
from .keys import Cost, Key, KeyPool

__all__ = ["MAX_SWITCHES", "PoolClient", "feedback_from_exception"]

#: How many times one request moves to another key after a 429 or a rejected key before
#: the answer goes back to the task (which then retries the item later).
MAX_SWITCHES = 8

GEMINI_DAY_TZ = "America/Los_Angeles"


def _json_body(response: httpx.Response) -> Any:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _request_model(kwargs: Mapping[str, Any]) -> str | None:
    body = kwargs.get("json")
    model = body.get("model") if isinstance(body, Mapping) else None
    return model if isinstance(model, str) else None


def _merge(base: Any, extra: Mapping[str, str]) -> Any:
    if not extra:
        return base
    merged = dict(base or {})
    merged.update(extra)
    return merged


class PoolClient:
    """The HTTP client a task gets as ``ctx.http``.

    >>> r = await ctx.http.post(url, json=body, cost=Cost(tokens=800))  # doctest: +SKIP
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        pool: KeyPool | None,
        clock: Clock,
        on_usage: Callable[[Usage], None] | None = None,
    ) -> None:
        self._client = client
        self._pool = pool
        self._clock = clock
        self._on_usage = on_usage

    @property
    def raw(self) -> httpx.AsyncClient:
        """The underlying httpx client, for requests that need no key."""
        return self._client

    def _feedback(self, pool: KeyPool, status: int, headers: Any, body: Any) -> Feedback:
        return read_feedback(
            status, headers, body, self._clock.time(),
            day_resets_tz=pool.day_resets or GEMINI_DAY_TZ,
        )  # fmt: skip

    async def request(
        self, method: str, url: str | httpx.URL, *, cost: Cost | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send one request with the best key; ``cost`` is what it is expected to use."""
        pool = self._pool
        if pool is None:
            return await self._client.request(method, url, **kwargs)
        cost = cost or Cost()
        headers, params = kwargs.pop("headers", None), kwargs.pop("params", None)
        switch = 0
        while True:
            lease = await pool.acquire(cost)
            key_headers, key_params = pool.headers_and_params(lease.key)
            try:
                response = await self._client.request(
                    method, url, headers=_merge(headers, key_headers),
                    params=_merge(params, key_params), **kwargs,
                )  # fmt: skip
                body = _json_body(response)
                feedback = self._feedback(pool, response.status_code, response.headers, body)
                pool.settle(lease, feedback)
                if self._on_usage is not None and response.is_success:
                    usage = read_usage(body, _request_model(kwargs))
                    if usage is not None:
                        self._on_usage(usage)
            except httpx.TransportError:
                lease.key.errors += 1
                raise
            finally:
                pool.release(lease)
            if feedback.verdict is Verdict.OK or switch >= MAX_SWITCHES:
                return response
            switch += 1

    async def get(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", url, **kwargs)

    @asynccontextmanager
    async def lease(self, cost: Cost | None = None) -> AsyncIterator[Key]:
        """A key and a slot for an SDK call that sends the request itself.

        An exception raised inside is read like an answer (SDK errors carry the status,
        headers and body), so a 429 cools the key and a rejected key is disabled; the
        exception still reaches the task.

        >>> async with ctx.lease(Cost(tokens=500)) as key:         # doctest: +SKIP
        ...     reply = await client.chat(api_key=key.secret, ...)
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("ctx.lease needs a job with keys=KeyPool(...)")
        lease = await pool.acquire(cost or Cost())
        try:
            yield lease.key
        except Exception as exc:
            feedback = feedback_from_exception(exc, self._clock.time(), pool)
            if feedback is not None:
                pool.settle(lease, feedback)
            raise
        else:
            pool.settle(lease, Feedback(Verdict.OK, None))
        finally:
            pool.release(lease)


def feedback_from_exception(exc: BaseException, now: float, pool: KeyPool) -> Feedback | None:
    """Read the status, headers and body an SDK exception carries, if any."""
    response: Any = getattr(exc, "response", None)
    status: Any = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
    if not isinstance(status, int):
        status = getattr(exc, "code", None)  # google-genai's APIError
        if not isinstance(status, int):
            return None
    headers = getattr(response, "headers", None) or {}
    body = getattr(exc, "body", None)
    if body is None:
        body = getattr(exc, "details", None) or getattr(exc, "response_json", None)
    if body is None and response is not None:
        try:
            body = response.json()
        except Exception:
            body = None
    if not isinstance(headers, Mapping):
        headers = {}
    return read_feedback(status, headers, body, now, day_resets_tz=pool.day_resets or GEMINI_DAY_TZ)
