"""Every kind of window at its limit, with no limits configured: the limiter against the
simulated providers (in process, on a fake clock), learning their limits from the answers.

Workers loop over ``ctx.http``-style requests (:class:`~paceline.client.PoolClient`); a
driver moves the fake clock from one wake-up to the next once every task has run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from paceline.client import PoolClient
from paceline.clock import FakeClock
from paceline.keys import KeyPool
from paceline.sim import KeyLimits, SimConfig, create_app
from paceline.sim.config import parse_latency

T0 = 1_700_000_000.0
GITHUB = "/repos/o/r"
OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
BODIES: dict[str, dict[str, Any]] = {
    OPENAI: {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    ANTHROPIC: {
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    },
}
AUTH = {GITHUB: "token", OPENAI: "bearer", ANTHROPIC: "header:x-api-key"}


def keys(n: int) -> list[str]:
    return [f"sk-window-test-{i:04d}-abcdef" for i in range(n)]


async def settle_down() -> None:
    """Let every task that can run now take its turn (no time passes)."""
    for _ in range(60):
        await asyncio.sleep(0)


async def drive(clock: FakeClock, until: float, done: Callable[[], bool]) -> None:
    """Move the clock from wake-up to wake-up until ``until`` or ``done()``."""
    while clock.time() < until and not done():
        await settle_down()
        live = [t for t, _, future in clock._sleepers if not future.done()]
        wake = min(live, default=until)
        clock.advance(max(0.0, min(wake, until) - clock.time()))
    await settle_down()


class Provider:
    """A simulated provider on a fake clock, and a pool of its keys with no limits set."""

    def __init__(self, path: str, limits: KeyLimits, n_keys: int, latency: str) -> None:
        self.clock = FakeClock(start=T0)
        self.secrets = keys(n_keys)
        config = SimConfig(
            keys=dict.fromkeys(self.secrets, limits), latency=parse_latency(latency), seed=7
        )
        self.app = create_app(config, clock=self.clock)
        self.path = path
        self.pool = KeyPool(self.secrets, auth=AUTH[path], clock=self.clock)
        self.events: list[str] = []
        self.pool.bind(self.clock, self.events.append)
        self.sent: list[tuple[float, int]] = []  # (time answered, status)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[PoolClient]:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
            yield PoolClient(http, self.pool, self.clock)

    async def stats(self) -> dict[str, Any]:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
            data: dict[str, Any] = (await http.get("/_sim/stats")).json()["total"]
            return data

    async def run(self, workers: int, requests: int, until: float) -> list[float]:
        """``requests`` requests by ``workers`` workers; the times they were answered OK."""
        left = requests
        ok: list[float] = []
        async with self.client() as http:

            async def work() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    if self.path == GITHUB:
                        r = await http.get(self.path)
                    else:
                        r = await http.post(self.path, json=BODIES[self.path])
                    if r.status_code == 200:
                        ok.append(self.clock.time())

            tasks = [asyncio.ensure_future(work()) for _ in range(workers)]
            await drive(self.clock, until, lambda: all(t.done() for t in tasks))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ok


# -- fixed windows -------------------------------------------------------------------------


async def test_fixed_windows_are_spent_then_used_again_right_after_their_reset() -> None:
    # Three GitHub tokens, 300 of their hour left, resetting in 20 s; 1,200 requests.
    limits = KeyLimits(rph=5000, rph_left=300, rph_reset=20)
    provider = Provider(GITHUB, limits, 3, "fixed:0.2")
    ok = await provider.run(workers=60, requests=1200, until=T0 + 120)
    stats = await provider.stats()
    assert len(ok) == 1200
    assert stats["rate_limited"] == 0  # no 403 drawn on the way
    before = [t for t in ok if t < T0 + 20]
    assert len(before) == 900  # every window's remainder spent before its reset...
    assert max(before) < T0 + 5  # ...as fast as the workers allow
    after = [t for t in ok if t >= T0 + 20]
    assert min(after) <= T0 + 20 + 1 + 0.2 + 0.01  # used again within a second of it
    assert max(ok) < T0 + 24
    assert any("learned limit 5000/hour fixed" in e for e in provider.events)


async def test_a_key_whose_fixed_window_is_spent_shows_parked_until_its_reset() -> None:
    limits = KeyLimits(rph=5000, rph_left=5, rph_reset=600)
    provider = Provider(GITHUB, limits, 1, "fixed:0.1")
    ok = await provider.run(workers=4, requests=10, until=T0 + 30)
    assert len(ok) == 5
    assert (await provider.stats())["rate_limited"] == 0
    (row,) = provider.pool.describe(provider.clock.time())
    assert row["state"].startswith("parked until")
    assert row["until"] == pytest.approx(T0 + 601, abs=0.01)  # the reset, give or take 1 s
    assert row["limits"] == ["5000/hour fixed"]
    wait = provider.pool.limiter.quota_wait(provider.clock.time())
    assert wait == pytest.approx(T0 + 601, abs=0.01)


# -- smooth windows learned from nothing ---------------------------------------------------


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
async def test_smooth_windows_learned_from_nothing_are_used_in_full(path: str) -> None:
    provider = Provider(path, KeyLimits(rpm=600), 4, "lognormal:1,0.5")
    ok = await provider.run(workers=80, requests=10**6, until=T0 + 90)
    stats = await provider.stats()
    steady = [t for t in ok if T0 + 30 <= t < T0 + 90]
    assert len(steady) / 60 >= 0.95 * 40  # ≥ 0.95 of 4 × 600/minute, from 30 s on
    assert stats["rate_limited"] <= 0.02 * stats["requests"]
    assert sum(1 for e in provider.events if "learned limit 600/minute" in e) == 1


# -- concurrency limits --------------------------------------------------------------------


async def test_a_concurrency_limit_is_learned_and_not_tripped_again_and_again() -> None:
    # GitHub's "at most N concurrent requests" (a secondary limit: 403 with retry-after).
    provider = Provider(GITHUB, KeyLimits(rph=100_000, concurrency=10), 1, "fixed:0.5")
    ok = await provider.run(workers=40, requests=10**6, until=T0 + 120)
    stats = await provider.stats()
    late = [t for t in ok if T0 + 60 <= t < T0 + 120]
    assert len(late) / 60 >= 0.8 * 10 / 0.5  # near 10 in flight, each 0.5 s
    assert stats["rate_limited"] <= 0.02 * stats["requests"]
    limits = provider.pool.limiter.view(provider.pool.keys[0].fingerprint).limits
    assert [lim.unit for lim in limits if lim.unit == "concurrent"] == ["concurrent"]


# -- shared through Redis, in real time ----------------------------------------------------


async def test_workers_sharing_fixed_windows_through_redis_spend_them_together(
    sim_server: Any, redis_url: Any
) -> None:
    from paceline.clock import SYSTEM_CLOCK
    from paceline.meters import open_meter_backend

    secrets = keys(2)
    limits = KeyLimits(rph=5000, rph_left=40, rph_reset=2)
    server = sim_server(keys=dict.fromkeys(secrets, limits), latency="fixed:0.05")
    left = 160  # 80 of them before the reset (2 × 40), 80 after
    answered: list[tuple[float, int]] = []

    async def worker() -> None:
        nonlocal left
        pool = KeyPool(secrets, auth="token")
        backend = open_meter_backend(redis_url.url, prefix=redis_url.prefix)
        pool.bind(SYSTEM_CLOCK, lambda message: None, backend=backend)
        await pool.limiter.start()
        try:
            async with httpx.AsyncClient(base_url=server.url) as http:
                client = PoolClient(http, pool, SYSTEM_CLOCK)

                async def one() -> None:
                    nonlocal left
                    while left > 0:
                        left -= 1
                        r = await client.get(GITHUB)
                        answered.append((SYSTEM_CLOCK.time(), r.status_code))

                await asyncio.gather(*(one() for _ in range(8)))
        finally:
            await pool.limiter.aclose()

    started = SYSTEM_CLOCK.time()
    await asyncio.wait_for(asyncio.gather(worker(), worker()), timeout=30)
    statuses = [status for _, status in answered]
    assert statuses.count(200) == 160
    assert 403 not in statuses and 429 not in statuses  # no limit drawn on the way
    # 80 before the windows reset, the rest after (within a second and a half of it).
    reset = started + 2
    assert sum(1 for t, _ in answered if t < reset) == 80
    assert min(t for t, _ in answered if t >= reset) <= reset + 2.5
