"""The limiter reading the simulated provider's real answers, on a fake clock.

Found by ``benchmarks/shared_quota.py`` (and ``benchmarks/quota_utilization.py`` with a
window longer than a minute): a smooth window announced as spent takes the next request
long before its reset (which says when it is full again).
"""

from __future__ import annotations

import asyncio

import httpx

from paceline.clock import FakeClock
from paceline.feedback import read_feedback
from paceline.keys import KeyPool
from paceline.sim import KeyLimits, SimConfig, create_app

T0 = 1_700_000_000.0
KEY = "sk-rolling-0123456789abcdef"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_full_rolling_minute_takes_the_next_request_when_its_oldest_leaves() -> None:
    clock = FakeClock(T0)
    app = create_app(SimConfig(keys={KEY: KeyLimits(rpm=60)}), clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:

        async def send() -> httpx.Response:
            auth = {"authorization": f"Bearer {KEY}"}
            return await http.post("/v1/chat/completions", json=BODY, headers=auth)

        # One request a second for a minute, the pace the pool's own meter keeps: the
        # 60th answer (at T0 + 59) says the window is spent and is full again in 1m0s.
        for _ in range(59):
            assert (await send()).status_code == 200
            clock.advance(1)
        pool = KeyPool([KEY], rpm=60, clock=clock)
        pool.bind(clock, lambda event: None)
        lease = await pool.acquire()
        last = await send()
        assert last.headers["x-ratelimit-remaining-requests"] == "0"
        assert last.headers["x-ratelimit-reset-requests"] == "1m0s"
        pool.settle(lease, read_feedback(last.status_code, last.headers, last.json(), T0 + 59))
        pool.release(lease)

        # The provider takes the next one at T0 + 60, when the request of T0 left its minute.
        nxt = asyncio.ensure_future(pool.acquire())
        for _ in range(20):  # T0 + 59 … T0 + 61, a tenth of a second at a time
            await asyncio.sleep(0)
            if nxt.done():
                break
            clock.advance(0.1)
            for _ in range(10):
                await asyncio.sleep(0)
        granted = nxt.done()
        nxt.cancel()
        assert (await send()).status_code == 200  # the provider did take it by then
        assert granted, "the key waited for the whole minute to pass, not for a free slot"
