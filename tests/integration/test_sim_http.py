"""The simulated provider over HTTP.

Wire tests use a real server on loopback (``SimServer``) and a real httpx client, with a key
per test so tests sharing the server do not share quota. Tests where time matters drive
``create_app`` through ``httpx.ASGITransport`` with a fake clock, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from paceline.clock import FakeClock
from paceline.sim import KeyLimits, SimConfig, SimServer, create_app
from paceline.sim.config import FixedLatency

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
GEMINI_MODEL = "gemini-2.0-flash"
GEMINI_PATH = f"/v1beta/models/{GEMINI_MODEL}:generateContent"
TEXT = "Please summarize this long document about rate limits and key pools for me"
SUMMARY = "Summary: Please summarize this long document about rate limits and key pools for"
START = 1_700_000_000.0
REVOKED = "sk-revoked-0009"
KEYS = {
    "sk-openai-0001": KeyLimits(rpm=3, tpm=10_000),
    "sk-openai-0002": KeyLimits(),
    "sk-ant-0003": KeyLimits(rpm=2, tpm=10_000),
    "gem-0004": KeyLimits(rpm=2, rpd=100),
    "gem-day-0005": KeyLimits(rpd=1),
    "gem-tok-0006": KeyLimits(tpm=30),
    "ghp_0007": KeyLimits(rph=2),
    "ghp_0008": KeyLimits(rph=100, rpm=1),
    "sk-stats-0010": KeyLimits(rpm=3),
    REVOKED: KeyLimits(),
}


# -- how each provider's clients send requests ---------------------------------------------


async def openai(
    client: httpx.AsyncClient, key: str | None, text: str = TEXT, **extra: object
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}
    return await client.post(OPENAI_PATH, headers=headers, json=body)


async def anthropic(client: httpx.AsyncClient, key: str | None) -> httpx.Response:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"} if key is not None else {}
    body = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": TEXT}]}
    return await client.post(ANTHROPIC_PATH, headers=headers, json=body)


async def gemini(
    client: httpx.AsyncClient, key: str | None, *, in_query: bool = False
) -> httpx.Response:
    body = {"contents": [{"role": "user", "parts": [{"text": TEXT}]}]}
    if key is None:
        return await client.post(GEMINI_PATH, json=body)
    if in_query:
        return await client.post(GEMINI_PATH, params={"key": key}, json=body)
    return await client.post(GEMINI_PATH, headers={"x-goog-api-key": key}, json=body)


async def github(
    client: httpx.AsyncClient, key: str | None, path: str, scheme: str = "token"
) -> httpx.Response:
    headers = {"authorization": f"{scheme} {key}"} if key is not None else {}
    return await client.get(path, headers=headers)


class RecordingClock(FakeClock):
    """A fake clock that remembers every sleep, so a test knows a request is waiting."""

    def __init__(self, start: float = START) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(keys=KEYS, revoked=frozenset({REVOKED}))) as server:
        yield server


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
        yield http


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


# -- OpenAI ---------------------------------------------------------------------------------


async def test_openai_success_is_a_deterministic_chat_completion(
    client: httpx.AsyncClient,
) -> None:
    response = await openai(client, "sk-openai-0002")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": SUMMARY,
        "refusal": None,
    }
    usage = body["usage"]
    assert usage["prompt_tokens"] >= len(TEXT) // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_openai_429_after_the_rpm_limit(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await openai(client, "sk-openai-0001")).status_code == 200
    response = await openai(client, "sk-openai-0001")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error.keys() == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (
        "requests",
        None,
        "rate_limit_exceeded",
    )
    assert error["message"].startswith(
        "Rate limit reached for gpt-4o-mini in organization org-sim on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in "
    )
    assert 55 <= int(response.headers["retry-after"]) <= 60
    assert 55_000 <= int(response.headers["retry-after-ms"]) <= 60_000
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-limit-tokens"] == "10000"
    assert {"x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens"} <= response.headers.keys()


@pytest.mark.parametrize("key", [REVOKED, "sk-unknown-xyz1"])
async def test_openai_401_masks_the_key(client: httpx.AsyncClient, key: str) -> None:
    response = await openai(client, key)
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        None,
        "invalid_api_key",
    )
    assert error["message"].startswith(f"Incorrect API key provided: …{key[-4:]}.")
    assert key not in response.text


async def test_openai_without_a_key_is_401(client: httpx.AsyncClient) -> None:
    response = await openai(client, None)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


# -- Anthropic ------------------------------------------------------------------------------


async def test_anthropic_success_429_and_401(client: httpx.AsyncClient) -> None:
    first = await anthropic(client, "sk-ant-0003")
    assert first.status_code == 200
    body = first.json()
    assert (body["type"], body["role"]) == ("message", "assistant")
    assert body["content"] == [{"type": "text", "text": SUMMARY}]
    assert body["usage"]["input_tokens"] > 0
    assert first.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert first.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert first.headers["anthropic-ratelimit-tokens-limit"] == "10000"

    assert (await anthropic(client, "sk-ant-0003")).status_code == 200
    limited = await anthropic(client, "sk-ant-0003")
    assert limited.status_code == 429
    assert limited.json()["type"] == "error"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert "2 requests per minute" in limited.json()["error"]["message"]
    assert 55 <= int(limited.headers["retry-after"]) <= 60

    for key in (REVOKED, None):
        denied = await anthropic(client, key)
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "authentication_error"


# -- Gemini ---------------------------------------------------------------------------------


async def test_gemini_success_with_key_in_header_or_query(client: httpx.AsyncClient) -> None:
    for in_query in (False, True):
        response = await gemini(client, "gem-0004", in_query=in_query)
        assert response.status_code == 200
        candidate = response.json()["candidates"][0]
        assert candidate["content"]["parts"][0]["text"] == SUMMARY
        meta = response.json()["usageMetadata"]
        assert meta["totalTokenCount"] == meta["promptTokenCount"] + meta["candidatesTokenCount"]
        assert not any(name.startswith("x-ratelimit") for name in response.headers)


def quota_failure(body: dict[str, Any]) -> dict[str, Any]:
    details = body["error"]["details"]
    types = [d["@type"].rsplit(".", 1)[-1] for d in details]
    assert types == ["QuotaFailure", "Help", "RetryInfo"]
    violation: dict[str, Any] = details[0]["violations"][0]
    return violation


async def test_gemini_429_names_the_exhausted_quota(client: httpx.AsyncClient) -> None:
    await gemini(client, "gem-0004")  # the success test may not have run first
    while (response := await gemini(client, "gem-0004")).status_code == 200:
        pass
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["message"].startswith("You exceeded your current quota")
    assert quota_failure(response.json()) == {
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        "quotaDimensions": {"location": "global", "model": GEMINI_MODEL},
        "quotaValue": "2",
    }
    delay = error["details"][2]["retryDelay"]
    assert delay.endswith("s")
    assert 1 <= int(delay[:-1]) <= 60
    assert "retry-after" not in response.headers

    await gemini(client, "gem-day-0005")
    daily = quota_failure((await gemini(client, "gem-day-0005")).json())
    assert daily["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"

    await gemini(client, "gem-tok-0006")  # about 20 of its 30 input tokens a minute
    tokens = quota_failure((await gemini(client, "gem-tok-0006")).json())
    assert tokens["quotaId"] == "GenerateContentInputTokensPerModelPerMinute-FreeTier"


async def test_gemini_bad_and_missing_keys(client: httpx.AsyncClient) -> None:
    bad = await gemini(client, REVOKED)
    assert bad.status_code == 400
    assert bad.json() == {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        }
    }
    missing = await gemini(client, None)
    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"


# -- GitHub ---------------------------------------------------------------------------------


async def test_github_bodies_are_derived_from_owner_and_repo(client: httpx.AsyncClient) -> None:
    key = "ghp_0008"
    repo = (await github(client, key, "/repos/octo/ingest")).json()
    assert (repo["full_name"], repo["owner"]["login"]) == ("octo/ingest", "octo")
    again = await client.get("/repos/octo/ingest", headers={"authorization": f"Bearer {key}"})
    assert again.status_code == 403  # rpm=1: GitHub's secondary limit
    languages = await github(client, "sk-openai-0002", "/repos/octo/ingest/languages", "Bearer")
    assert languages.status_code == 200
    assert all(isinstance(size, int) for size in languages.json().values())
    assert "x-ratelimit-limit" not in languages.headers  # no hourly limit on that key

    shas: list[str] = []
    url: str | None = "/repos/octo/ingest/commits?per_page=10"
    while url is not None:
        page = await github(client, "sk-openai-0002", url)
        assert page.status_code == 200
        shas += [commit["sha"] for commit in page.json()]
        url = page.links.get("next", {}).get("url")
        assert url is None or len(page.json()) == 10
    assert len(shas) == len(set(shas)) >= 1
    missing = await github(client, "sk-openai-0002", "/repos/octo/missing-repo")
    assert missing.status_code == 404
    assert missing.json()["message"] == "Not Found"


async def test_github_primary_limit_is_403_with_remaining_zero(client: httpx.AsyncClient) -> None:
    key = "ghp_0007"
    first = await github(client, key, "/repos/octo/a")
    assert first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert first.headers["x-ratelimit-used"] == "1"
    assert first.headers["x-ratelimit-resource"] == "core"
    reset = int(first.headers["x-ratelimit-reset"])
    rate = await github(client, key, "/rate_limit")
    assert rate.json()["resources"]["core"]["used"] == 1  # /rate_limit does not count
    await github(client, key, "/repos/octo/b/commits")
    limited = await github(client, key, "/repos/octo/c")
    assert limited.status_code == 403
    assert limited.json() == {
        "message": "API rate limit exceeded for user ID 1.",
        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
    }
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) == reset
    assert "retry-after" not in limited.headers


async def test_github_secondary_limit_and_bad_credentials(client: httpx.AsyncClient) -> None:
    key = "sk-stats-0010"  # rpm=3
    for _ in range(3):
        await github(client, key, "/repos/octo/x")
    secondary = await github(client, key, "/repos/octo/x")
    assert secondary.status_code == 403
    assert secondary.json()["message"].startswith("You have exceeded a secondary rate limit")
    assert int(secondary.headers["retry-after"]) >= 1
    bad = await github(client, REVOKED, "/repos/octo/x")
    assert bad.status_code == 401
    assert bad.json()["message"] == "Bad credentials"
    assert (await github(client, None, "/repos/octo/x")).status_code == 401


# -- stats, serving modes ---------------------------------------------------------------------


async def test_stats_count_per_masked_key() -> None:
    config = SimConfig(keys={"sk-a-0001": KeyLimits(rpm=2)})
    async with SimServer(config) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        ok = [await openai(http, "sk-a-0001"), await gemini(http, "sk-a-0001")]
        await openai(http, "sk-a-0001")  # rate limited
        await openai(http, "sk-b-0002")  # unknown key
        stats = (await http.get("/_sim/stats")).json()
    tokens = (
        ok[0].json()["usage"]["total_tokens"] + ok[1].json()["usageMetadata"]["totalTokenCount"]
    )
    assert stats["keys"]["…0001"] == {
        "requests": 3,
        "ok": 2,
        "rate_limited": 1,
        "errors": 0,
        "tokens": tokens,
    }
    assert stats["keys"]["…0002"]["errors"] == 1
    assert stats["total"] == {
        "requests": 4,
        "ok": 2,
        "rate_limited": 1,
        "errors": 1,
        "tokens": tokens,
    }
    assert "sk-a" not in str(stats)


async def test_a_hang_makes_a_client_with_a_shorter_timeout_time_out() -> None:
    config = SimConfig(hang_rate=1.0, hang_seconds=0.4)
    async with SimServer(config) as sim, httpx.AsyncClient(base_url=sim.url, timeout=0.1) as http:
        with pytest.raises(httpx.ReadTimeout):
            await openai(http, "sk-any")


def test_a_busy_port_is_a_readable_error_and_a_server_starts_once(sim: SimServer) -> None:
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{sim.port}"):
        SimServer(port=sim.port)
    with pytest.raises(RuntimeError, match="starts only once"):
        sim.start()
    unused = SimServer()
    unused.stop()  # releases the port it bound


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_serve_runs_until_ctrl_c_and_exits_cleanly() -> None:
    code = "from paceline.sim import serve; serve(on_ready=lambda url: print(url, flush=True))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert httpx.get(f"{url}/_sim/stats").status_code == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert proc.stderr.read() == ""
        finally:
            proc.kill()


# -- time-dependent behaviour, on a fake clock --------------------------------------------------


async def test_openai_headers_and_recovery_follow_the_clock() -> None:
    clock = FakeClock(START)
    app = create_app(SimConfig(keys={"sk-t-0001": KeyLimits(rpm=3, tpm=1_000)}), clock)
    async with asgi_client(app) as http:
        first = await openai(http, "sk-t-0001", max_tokens=200)
        prompt = first.json()["usage"]["prompt_tokens"]
        # OpenAI charges the whole max_tokens against TPM, not what was generated.
        assert first.headers["x-ratelimit-remaining-tokens"] == str(1_000 - prompt - 200)
        assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
        clock.advance(30)
        await openai(http, "sk-t-0001")
        third = await openai(http, "sk-t-0001")
        assert third.headers["x-ratelimit-remaining-requests"] == "0"
        clock.advance(15)
        limited = await openai(http, "sk-t-0001")
        assert limited.status_code == 429
        assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == (
            "15",
            "15000",
        )
        assert limited.headers["x-ratelimit-reset-requests"] == "45s"
        assert "Please try again in 15s." in limited.json()["error"]["message"]
        clock.advance(15)
        assert (await openai(http, "sk-t-0001")).status_code == 200


async def test_github_reset_epoch_and_429_when_configured() -> None:
    clock = FakeClock(START)
    config = SimConfig(keys={"ghp_t": KeyLimits(rph=1)}, github_limit_status=429)
    async with asgi_client(create_app(config, clock)) as http:
        first = await github(http, "ghp_t", "/repos/o/r")
        assert first.headers["x-ratelimit-reset"] == str(int(START) + 3600)
        clock.advance(600)
        limited = await github(http, "ghp_t", "/repos/o/r")
        assert limited.status_code == 429
        assert limited.headers["x-ratelimit-reset"] == str(int(START) + 3600)
        clock.advance(3000)
        renewed = await github(http, "ghp_t", "/repos/o/r")
        assert renewed.status_code == 200
        assert renewed.headers["x-ratelimit-reset"] == str(int(START) + 3600 + 3600)


async def test_gemini_daily_quota_comes_back_at_pacific_midnight() -> None:
    clock = FakeClock(1_705_391_940.0)  # 2024-01-15 23:59:00 in Los Angeles
    app = create_app(SimConfig(keys={"gem": KeyLimits(rpd=1)}), clock)
    async with asgi_client(app) as http:
        assert (await gemini(http, "gem")).status_code == 200
        limited = await gemini(http, "gem")
        assert limited.json()["error"]["details"][2]["retryDelay"] == "60s"
        clock.advance(60)
        assert (await gemini(http, "gem")).status_code == 200


async def test_injected_faults_use_each_style_s_error_body() -> None:
    app = create_app(SimConfig(error_rate=1.0, seed=1), FakeClock(START))
    async with asgi_client(app) as http:
        for _ in range(5):
            response = await openai(http, "k")
            assert response.status_code in (500, 502, 503)
            assert response.json()["error"]["type"] == "server_error"
            response = await anthropic(http, "k")
            assert response.status_code in (500, 529)
            assert response.json()["error"]["type"] in ("api_error", "overloaded_error")
            response = await gemini(http, "k")
            assert response.status_code in (500, 503)
            assert response.json()["error"]["status"] in ("INTERNAL", "UNAVAILABLE")
            response = await github(http, "k", "/repos/o/r")
            assert response.status_code in (500, 502, 503)
        stats = (await http.get("/_sim/stats")).json()
    assert stats["total"]["errors"] == 20


async def test_hangs_and_latency_wait_on_the_injected_clock() -> None:
    clock = RecordingClock()
    config = SimConfig(hang_rate=1.0, hang_seconds=30.0, latency=FixedLatency(0.25))
    async with asgi_client(create_app(config, clock)) as http:
        request = asyncio.create_task(openai(http, "k"))
        for _ in range(1_000):
            if clock.sleeps:
                break
            await asyncio.sleep(0)
        assert clock.sleeps == [30.0]
        clock.advance(30)
        for _ in range(1_000):
            if len(clock.sleeps) == 2:
                break
            await asyncio.sleep(0)
        assert clock.sleeps == [30.0, 0.25]
        assert not request.done()
        clock.advance(0.25)
        assert (await asyncio.wait_for(request, 5)).status_code == 200


async def test_reset_clears_meters_and_stats() -> None:
    app = create_app(SimConfig(default_limits=KeyLimits(rpm=1)), FakeClock(START))
    async with asgi_client(app) as http:
        await openai(http, "k")
        assert (await openai(http, "k")).status_code == 429
        assert (await http.post("/_sim/reset")).status_code == 200
        assert (await http.get("/_sim/stats")).json()["total"]["requests"] == 0
        assert (await openai(http, "k")).status_code == 200


async def test_concurrency_limit_answers_429_while_requests_are_in_flight() -> None:
    clock = RecordingClock()
    config = SimConfig(default_limits=KeyLimits(concurrency=1), latency=FixedLatency(1.0))
    async with asgi_client(create_app(config, clock)) as http:
        slow = asyncio.create_task(anthropic(http, "k"))
        for _ in range(1_000):
            if clock.sleeps:
                break
            await asyncio.sleep(0)
        refused = await anthropic(http, "k")
        assert refused.status_code == 429
        assert "1 concurrent requests" in refused.json()["error"]["message"]
        clock.advance(1.0)
        assert (await asyncio.wait_for(slow, 5)).status_code == 200
