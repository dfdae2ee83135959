"""``ctx.http``: an httpx client bound to the job's key pool.

Each request takes a key and a slot from the pool's limiter, carries the key the way the
pool says, and feeds the answer back (rate-limit headers, usage, 429s, rejected keys).
A 429 (or a spent quota, or a rejected key) does not reach the task: the request goes
again at once on the best other key, up to :data:`MAX_SWITCHES` times. Without a pool it
is a plain shared httpx client.

``ctx.lease`` is the same for an SDK with its own HTTP stack: the :class:`LeaseHandle` it
gives carries the key, and takes the usage the call reports (``lease.usage(response)``),
so token limits, cost and ``--budget`` count it as they count ``ctx.http``'s answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ._waits import header_dict
from .clock import Clock
from .cost import Usage, read_usage, usage_of
from .feedback import Feedback, Verdict, read_feedback
from .keys import Cost, Key, KeyPool

__all__ = ["MAX_SWITCHES", "LeaseHandle", "PoolClient", "feedback_from_exception"]

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


_MAX_OUTPUT = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _split_cost(cost: Cost, body: Any) -> Cost:
    """A cost whose tokens are one estimate, split by the request's own cap on output
    (``max_tokens``): providers count output against their output limit by that cap."""
    if cost.tokens <= 0 or cost.input_tokens is not None or cost.output_tokens is not None:
        return cost
    if not isinstance(body, Mapping):
        return cost
    cap = next((body[k] for k in _MAX_OUTPUT if isinstance(body.get(k), int)), None)
    if cap is None or isinstance(cap, bool) or not 0 < cap < cost.tokens:
        return cost
    return Cost(cost.requests, cost.tokens, output_tokens=cap)


def _with_usage(feedback: Feedback, usage: Usage | None) -> Feedback:
    if usage is None:
        return feedback
    return dataclasses.replace(
        feedback,
        tokens_used=usage.total,
        input_used=usage.metered_input,
        output_used=usage.output,
    )


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
        cost = _split_cost(cost or Cost(), kwargs.get("json"))
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
    async def lease(self, cost: Cost | None = None) -> AsyncIterator[LeaseHandle]:
        """A key and a slot for an SDK call that sends the request itself.

        The handle carries the key (``.secret``, ``.masked``, ``.fingerprint``); report
        what the call used with ``lease.usage(response)`` (an SDK's response object) or
        ``lease.usage(input_tokens=…, output_tokens=…, model=…)``, so token limits settle
        on it and its cost counts (``--budget``). An exception raised inside is read like
        an answer (SDK errors carry the status, headers and body), so a 429 cools the key
        and a rejected key is disabled; the exception still reaches the task. A refused
        request's tokens are not counted as used.

        >>> async with ctx.lease(Cost(tokens=500)) as lease:        # doctest: +SKIP
        ...     reply = await client.chat.completions.create(..., api_key=lease.secret)
        ...     lease.usage(reply)
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("ctx.lease needs a job with keys=KeyPool(...)")
        lease = await pool.acquire(cost or Cost())
        handle = LeaseHandle(lease.key)
        try:
            yield handle
        except Exception as exc:
            now = self._clock.time()
            feedback = feedback_from_exception(exc, now, pool)
            refused = feedback is not None and feedback.verdict is not Verdict.OK
            if feedback is None and handle.reported is not None:
                feedback = self._answer(pool, handle, now)
            if feedback is not None:
                if not refused:  # the provider answered and counted the call
                    feedback = _with_usage(feedback, handle.reported)
                pool.settle(lease, feedback)
            if not refused:
                self._count(handle.reported)
            raise
        else:
            feedback = _with_usage(self._answer(pool, handle, self._clock.time()), handle.reported)
            pool.settle(lease, feedback)
            self._count(handle.reported)
        finally:
            pool.release(lease)

    def _answer(self, pool: KeyPool, handle: LeaseHandle, now: float) -> Feedback:
        """A success, with what its headers (if the task handed them over) announce."""
        if not handle.headers:
            return Feedback(Verdict.OK, None)
        return self._feedback(pool, 200, handle.headers, None)

    def _count(self, usage: Usage | None) -> None:
        if usage is not None and self._on_usage is not None:
            self._on_usage(usage)


class LeaseHandle:
    """What ``async with ctx.lease(...) as lease`` gives: the key to send the request with
    (``lease.secret``; ``masked`` and ``fingerprint`` to show or log), and
    :meth:`usage` to report what the call used. ``repr`` never shows the secret.
    """

    __slots__ = ("headers", "key", "reported")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.reported: Usage | None = None
        self.headers: dict[str, str] = {}

    @property
    def secret(self) -> str:
        return self.key.secret

    @property
    def masked(self) -> str:
        return self.key.masked

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint

    def __repr__(self) -> str:
        return f"LeaseHandle({self.key.masked})"

    __str__ = __repr__

    def usage(
        self,
        response: Any = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        model: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Usage | None:
        """Report what the call used: an SDK's response object (OpenAI, Anthropic, Google;
        a raw response's headers are read too), a JSON body, or the numbers themselves.
        Returns the usage understood (``None`` if the response reports none).

        >>> lease.usage(message)                                      # doctest: +SKIP
        >>> lease.usage(input_tokens=1200, output_tokens=80, model="gpt-4o-mini")  # doctest: +SKIP
        """
        found = usage_of(response, model) if response is not None else None
        if input_tokens is not None or output_tokens is not None:
            base = found or Usage(model, 0, 0)
            found = Usage(
                model or base.model,
                input_tokens if input_tokens is not None else base.input,
                output_tokens if output_tokens is not None else base.output,
                base.cache_read if input_tokens is None else 0,
            )
        if found is not None:
            self.reported = found
        given = headers if headers is not None else getattr(response, "headers", None)
        if given is not None:
            self.headers.update(header_dict(given))
        return found


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
