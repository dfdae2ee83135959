"""``ctx.http``: an httpx client bound to the job's key pool.

Each request takes a key from the pool (the limiter's seam), carries it the way the pool
says, and reports the answer back so a 429 cools that key and a 401 disables it. Without
a pool it is a plain shared httpx client.
"""

from __future__ import annotations

from typing import Any

import httpx

from .clock import Clock
from .keys import Cost, KeyPool
from .retry import retry_after_seconds

__all__ = ["PoolClient"]


class PoolClient:
    """The HTTP client a task gets as ``ctx.http``.

    >>> r = await ctx.http.post(url, json=body, cost=Cost(tokens=800))  # doctest: +SKIP
    """

    def __init__(self, client: httpx.AsyncClient, pool: KeyPool | None, clock: Clock) -> None:
        self._client = client
        self._pool = pool
        self._clock = clock

    @property
    def raw(self) -> httpx.AsyncClient:
        """The underlying httpx client, for requests that need no key."""
        return self._client

    async def request(
        self, method: str, url: str | httpx.URL, *, cost: Cost | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send one request with the best key; ``cost`` is what it will use."""
        pool = self._pool
        if pool is None:
            return await self._client.request(method, url, **kwargs)
        key = await pool.acquire(cost)
        headers, params = pool.headers_and_params(key)
        if headers:
            kwargs["headers"] = {**dict(kwargs.get("headers") or {}), **headers}
        if params:
            kwargs["params"] = {**dict(kwargs.get("params") or {}), **params}
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.TransportError:
            key.errors += 1
            raise
        pool.record(
            key, response.status_code, retry_after_seconds(response.headers, self._clock.time())
        )
        return response

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
