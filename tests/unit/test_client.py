"""ctx.lease: a key for an SDK call, and the usage it reports, counted as ctx.http's is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from paceline.client import LeaseHandle, PoolClient
from paceline.clock import FakeClock
from paceline.cost import Usage, usage_of
from paceline.keys import Cost, KeyPool

T0 = 1_700_000_000.0
SECRET = "sk-test-0123456789abcdef"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def client_for(
    http: httpx.AsyncClient, pool: KeyPool, clock: FakeClock
) -> tuple[PoolClient, list[Usage]]:
    counted: list[Usage] = []
    pool.bind(clock, lambda message: None)
    return PoolClient(http, pool, clock, counted.append), counted


def openai_completion(prompt: int, completion: int) -> Any:
    usage = SimpleNamespace(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    return SimpleNamespace(model="gpt-4o-mini", usage=usage, choices=[])


def anthropic_message(inputs: int, outputs: int, created: int = 0, read: int = 0) -> Any:
    usage = SimpleNamespace(
        input_tokens=inputs,
        output_tokens=outputs,
        cache_creation_input_tokens=created,
        cache_read_input_tokens=read,
    )
    return SimpleNamespace(model="claude-sonnet-4-5", usage=usage, content=[])


def gemini_response(prompt: int, candidates: int, thoughts: int = 0) -> Any:
    meta = SimpleNamespace(
        prompt_token_count=prompt,
        candidates_token_count=candidates,
        thoughts_token_count=thoughts,
    )
    return SimpleNamespace(model_version="gemini-2.0-flash", usage_metadata=meta, usage=None)


class RateLimitError(Exception):
    """What an SDK raises on a 429: the status, and the response with its headers."""

    def __init__(self) -> None:
        super().__init__("429 rate limited")
        self.status_code = 429
        self.response = SimpleNamespace(status_code=429, headers={"retry-after": "20"})
        self.body = {"error": {"type": "rate_limit_error", "message": "slow down"}}


# -- the handle ----------------------------------------------------------------------------


async def test_the_handle_carries_the_key_and_never_shows_its_secret(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    pool = KeyPool([SECRET], clock=clock)
    client, _ = client_for(http, pool, clock)
    async with client.lease() as lease:
        assert isinstance(lease, LeaseHandle)
        assert lease.secret == SECRET
        assert lease.masked == pool.keys[0].masked
        assert lease.fingerprint == pool.keys[0].fingerprint
        assert SECRET not in repr(lease)
        assert SECRET not in str(lease)


# -- usage reported ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (openai_completion(1200, 80), Usage("gpt-4o-mini", 1200, 80)),
        (anthropic_message(1000, 50, 100, 2000), Usage("claude-sonnet-4-5", 3100, 50, 2000)),
        (gemini_response(700, 40, 30), Usage("gemini-2.0-flash", 700, 70)),
        ({"model": "m", "usage": {"input_tokens": 5, "output_tokens": 6}}, Usage("m", 5, 6)),
    ],
)
def test_usage_is_read_from_sdk_response_objects(response: Any, expected: Usage) -> None:
    assert usage_of(response) == expected


def test_a_raw_response_is_parsed_and_anything_else_reports_nothing() -> None:
    raw = SimpleNamespace(headers={}, parse=lambda: openai_completion(10, 2))
    assert usage_of(raw) == Usage("gpt-4o-mini", 10, 2)
    assert usage_of(object()) is None
    assert usage_of("text") is None


async def leased_at(client: Any, clock: FakeClock, cost: Cost) -> float:
    """When a lease of ``cost`` is given, the fake clock moved on in steps meanwhile."""

    async def take() -> float:
        async with client.lease(cost):
            return clock.time()

    task = asyncio.create_task(take())
    for _ in range(10_000):
        for _ in range(5):
            await asyncio.sleep(0)
        if task.done():
            break
        clock.advance(0.05)
    return await task


async def test_reported_usage_reaches_the_cost_path_and_settles_the_token_meters(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    pool = KeyPool([SECRET], tpm=10_000, clock=clock)
    client, counted = client_for(http, pool, clock)
    async with client.lease(Cost(tokens=5000)) as lease:
        lease.usage(openai_completion(1200, 80))
    assert counted == [Usage("gpt-4o-mini", 1200, 80)]
    assert pool.keys[0].tokens == 1280  # the estimate was settled on what was used
    # So the next waits for the 1,280 tokens' share of the minute (8 s), not the 5,000's.
    assert await leased_at(client, clock, Cost(tokens=8000)) <= T0 + 0.14 * 60


async def test_usage_given_as_numbers_counts_too(http: httpx.AsyncClient, clock: FakeClock) -> None:
    pool = KeyPool([SECRET], clock=clock)
    client, counted = client_for(http, pool, clock)
    async with client.lease() as lease:
        lease.usage(input_tokens=300, output_tokens=20, model="gpt-4o")
    assert counted == [Usage("gpt-4o", 300, 20)]
    assert pool.keys[0].tokens == 320


async def test_input_and_output_tokens_settle_their_own_meters(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    pool = KeyPool(
        [SECRET],
        limits=["10000 input tokens/minute", "1000 output tokens/minute"],
        clock=clock,
    )
    client, _ = client_for(http, pool, clock)
    async with client.lease(Cost(input_tokens=9000, output_tokens=900)) as lease:
        lease.usage(anthropic_message(2000, 100, read=5000))  # cache reads: not input
    view = pool.limiter.view(pool.keys[0].fingerprint)
    assert [limit.describe() for limit in view.limits] == [
        "10000 input tokens/minute",
        "1000 output tokens/minute",
    ]
    # The next waits for the 2,000 input tokens' share of the minute (12 s), not the
    # 9,000's (54 s); the output meter, for its 100 (6 s).
    at = await leased_at(client, clock, Cost(input_tokens=8000, output_tokens=900))
    assert T0 + 0.19 * 60 <= at <= T0 + 0.22 * 60


async def test_a_refused_call_counts_no_tokens_and_cools_the_key(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    pool = KeyPool([SECRET], clock=clock)
    client, counted = client_for(http, pool, clock)

    async def call() -> None:
        async with client.lease(Cost(tokens=100)) as lease:
            lease.usage(openai_completion(100, 0))  # reported, but the provider said no
            raise RateLimitError

    with pytest.raises(RateLimitError):
        await call()
    assert counted == []
    key = pool.keys[0]
    assert (key.state, key.until, key.rate_limited) == ("cooling", T0 + 20, 1)


async def test_a_task_error_after_the_call_still_counts_what_the_call_used(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    pool = KeyPool([SECRET], clock=clock)
    client, counted = client_for(http, pool, clock)

    async def call() -> None:
        async with client.lease() as lease:
            lease.usage(openai_completion(40, 4))
            raise ValueError("bad reply")

    with pytest.raises(ValueError, match="bad reply"):
        await call()
    assert counted == [Usage("gpt-4o-mini", 40, 4)]


async def test_headers_handed_over_teach_the_limits(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    pool = KeyPool([SECRET], clock=clock)
    events: list[str] = []
    pool.bind(clock, events.append)
    client = PoolClient(http, pool, clock)
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
    }
    raw = SimpleNamespace(headers=headers, parse=lambda: openai_completion(10, 2))
    async with client.lease() as lease:
        lease.usage(raw)
    limits = pool.limiter.view(pool.keys[0].fingerprint).limits
    assert [limit.describe() for limit in limits] == ["500/minute"]
    assert events == [f"key {pool.keys[0].masked}: learned limit 500/minute"]


async def test_ctx_http_splits_one_token_estimate_by_the_requests_output_cap(
    clock: FakeClock,
) -> None:
    # Output limits count a request's max_tokens: a long prompt with a short answer is not
    # charged its whole size against the output limit.
    def answer(request: httpx.Request) -> httpx.Response:
        usage = {"input_tokens": 3900, "output_tokens": 90}
        return httpx.Response(200, json={"model": "claude", "usage": usage})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        pool = KeyPool([SECRET], limits=["1000 output tokens/minute"], clock=clock)
        client, counted = client_for(http, pool, clock)
        for _ in range(5):  # 5 × 100 output tokens fit, though each estimate is 4,000
            body = {"max_tokens": 100, "messages": []}
            r = await client.post("http://api.test/v1/messages", json=body, cost=Cost(4000))
            assert r.status_code == 200
        assert clock.time() == T0
        assert counted[-1] == Usage("claude", 3900, 90)
