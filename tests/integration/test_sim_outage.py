"""Outages of the simulated provider: refused connections, cut requests, the same port after.

The outage's length runs on a fake clock (the server's own), so these tests never wait it
out; only the server coming back on its socket is waited for, in a few milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx
import pytest

from paceline.clock import FakeClock
from paceline.sim import SimConfig, SimServer, create_app
from paceline.sim.config import FixedLatency

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
AUTH = {"authorization": "Bearer sk-outage-0001"}


async def until_back(url: str, timeout: float = 5.0) -> httpx.Response:
    """The first answer of a server coming back from an outage."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                async with httpx.AsyncClient() as http:
                    return await http.get(f"{url}/_sim/stats")
            except httpx.ConnectError:
                await asyncio.sleep(0.01)


async def until_down(url: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                async with httpx.AsyncClient() as http:
                    await http.get(f"{url}/_sim/stats")
            except httpx.ConnectError:
                return
            await asyncio.sleep(0.01)


async def parked(clock: FakeClock, sleepers: int) -> None:
    """Wait until ``sleepers`` coroutines sleep on the fake clock."""
    for _ in range(10_000):
        if len(clock._sleepers) >= sleepers:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"fewer than {sleepers} sleepers on the clock")


async def test_an_outage_refuses_connections_cuts_requests_and_serves_again_on_its_port() -> None:
    clock = FakeClock()
    config = SimConfig(latency=FixedLatency(10.0))  # answers wait for the fake clock
    async with SimServer(config, clock=clock) as sim, httpx.AsyncClient() as http:
        waiting = asyncio.create_task(http.post(sim.url + CHAT, headers=AUTH, json=BODY))
        await parked(clock, 1)

        sim.outage(30)
        with pytest.raises(httpx.RemoteProtocolError):
            await waiting  # cut: the answer never comes
        await until_down(sim.url)
        assert sim.down
        with pytest.raises(httpx.ConnectError):  # refused, not a timeout: nobody listens
            await http.get(sim.url + "/_sim/stats", timeout=5)

        clock.advance(29)
        await asyncio.sleep(0.05)
        assert sim.down  # not yet
        clock.advance(1)
        stats = (await until_back(sim.url)).json()["total"]
        assert not sim.down and sim.outages == 1
        assert stats == {"requests": 1, "ok": 0, "rate_limited": 0, "errors": 1, "tokens": 0}

        answer = asyncio.create_task(http.post(sim.url + CHAT, headers=AUTH, json=BODY))
        await parked(clock, 1)
        clock.advance(10)
        assert (await answer).status_code == 200


async def test_an_outage_during_another_extends_it() -> None:
    clock = FakeClock()
    async with SimServer(SimConfig(), clock=clock) as sim:
        sim.outage(10)
        await until_down(sim.url)
        clock.advance(5)
        sim.outage(10)  # now ends at 15
        clock.advance(9)
        await asyncio.sleep(0.05)
        assert sim.down
        clock.advance(1)
        await until_back(sim.url)
        assert sim.outages == 1


async def test_post_outage_answers_first_then_goes_down() -> None:
    clock = FakeClock()
    async with SimServer(SimConfig(), clock=clock) as sim:
        async with httpx.AsyncClient() as http:
            r = await http.post(sim.url + "/_sim/outage", params={"seconds": "2.5"})
        assert (r.status_code, r.json()) == (202, {"outage": 2.5})
        await until_down(sim.url)
        clock.advance(2.5)
        await until_back(sim.url)


async def test_stopping_during_an_outage_is_prompt_and_frees_the_port() -> None:
    sim = SimServer(SimConfig(), clock=FakeClock())
    async with asyncio.timeout(5):
        async with sim:
            sim.outage(3600)
            await until_down(sim.url)
    assert not sim.down
    SimServer(port=sim.port).stop()  # the port is free again


@pytest.mark.parametrize(
    ("query", "status"),
    [({"seconds": "5"}, 501), ({"seconds": "soon"}, 422), ({"seconds": "-1"}, 422), ({}, 422)],
)
async def test_outage_requests_a_bare_app_cannot_serve(query: dict[str, str], status: int) -> None:
    app = create_app(SimConfig(), FakeClock())
    if status == 422:
        app.state.outage = lambda seconds: None  # as if served: only the input is wrong
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
        r = await http.post("/_sim/outage", params=query)
    assert r.status_code == status
    assert "error" in r.json()


def test_outage_needs_a_serving_server_and_a_sane_length() -> None:
    idle = SimServer()
    try:
        with pytest.raises(RuntimeError, match="not serving"):
            idle.outage(1)
        with pytest.raises(ValueError, match="0 seconds or more"):
            idle.outage(float("nan"))
    finally:
        idle.stop()


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_paceline_sim_goes_down_on_request_and_comes_back() -> None:
    cmd = [sys.executable, "-m", "paceline", "sim", "--port", "0", "--latency", "fixed:0.01"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out, err = subprocess.PIPE, subprocess.PIPE
    with subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            url = proc.stdout.readline().split("serving on", 1)[1].split()[0]
            r = httpx.post(url + "/_sim/outage", params={"seconds": "2"})
            assert r.status_code == 202
            asyncio.run(until_down(url))
            with pytest.raises(httpx.ConnectError, match="refused"):
                httpx.get(url + "/_sim/stats", timeout=1)
            back = asyncio.run(until_back(url))
            assert back.status_code == 200
            assert httpx.post(url + CHAT, headers=AUTH, json=BODY).status_code == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert proc.stderr.read() == ""
        finally:
            proc.kill()
