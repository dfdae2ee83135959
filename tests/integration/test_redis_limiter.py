"""Workers sharing keys through Redis: real Redis, real time (a few seconds each).

Each "worker" is a KeyPool with its own Redis connection, as separate processes would
have; grants are recorded with the send time Redis gave them (its clock, one for all).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.conftest import PrivateRedis

from paceline.clock import SYSTEM_CLOCK
from paceline.feedback import Feedback, Verdict
from paceline.keys import Cost, KeyPool
from paceline.limiter import Lease
from paceline.meters import MeterBackend, open_meter_backend

SECRETS = ["sk-shared-0123456789abcdef", "sk-second-0123456789abcdef"]


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` that any half-open window ``[s, s + window)`` holds."""
    times = sorted(times)
    return max(
        bisect.bisect_left(times, t + window - 1e-3) - bisect.bisect_left(times, t) for t in times
    )


class Worker:
    """One pool on its own Redis connection, with acquirers that ask again at once."""

    def __init__(self, url: str, prefix: str, secrets: list[str], **limits: Any) -> None:
        self.pool = KeyPool(secrets, **limits)
        self.backend: MeterBackend = open_meter_backend(url, prefix=prefix)
        self.events: list[str] = []
        self.pool.bind(SYSTEM_CLOCK, self.events.append, backend=self.backend)
        self.sent: list[float] = []  # send times, on Redis's clock
        self.granted: list[float] = []  # when acquire returned, on this machine's clock
        self.keys: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def _loop(self, feedback: Callable[[Lease[Any]], Feedback] | None) -> None:
        while True:
            lease = await self.pool.acquire(Cost())
            self.granted.append(time.time())
            assert lease.reservation is not None
            self.sent.append(lease.reservation.at)
            self.keys.append(lease.key.secret)
            if feedback is not None:
                self.pool.settle(lease, feedback(lease))
            self.pool.release(lease)

    def saturate(
        self, acquirers: int, feedback: Callable[[Lease[Any]], Feedback] | None = None
    ) -> None:
        self.tasks += [asyncio.create_task(self._loop(feedback)) for _ in range(acquirers)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        errors = [r for r in results if not isinstance(r, asyncio.CancelledError)]
        assert errors == [], errors  # nothing but our own cancellation reached the caller


@pytest.fixture
async def workers(redis_url: Any) -> AsyncIterator[Callable[..., Worker]]:
    made: list[Worker] = []

    def make(*secrets: str, url: str | None = None, **limits: Any) -> Worker:
        worker = Worker(url or redis_url.url, redis_url.prefix, list(secrets), **limits)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        with contextlib.suppress(Exception):
            await worker.stop()
        await worker.pool.limiter.aclose()


async def test_two_workers_sharing_a_key_stay_within_its_limit_together(
    workers: Callable[..., Worker],
) -> None:
    a = workers(SECRETS[0], limits=["20/s"])
    b = workers(SECRETS[0], limits=["20/s"])
    for worker in (a, b):
        await worker.pool.limiter.start()
        worker.saturate(6)
    await asyncio.sleep(3.0)
    for worker in (a, b):
        await worker.stop()
    sent = a.sent + b.sent
    assert a.sent and b.sent  # both got their share
    assert max_in_window(sent, 1.0) <= 20
    start = min(sent)
    assert sum(start + 1 <= t < start + 2.5 for t in sent) >= 0.97 * 20 * 1.5


async def test_a_key_disabled_by_one_worker_is_skipped_by_the_other(
    workers: Callable[..., Worker],
) -> None:
    a = workers(*SECRETS)
    b = workers(*SECRETS)
    await a.pool.limiter.start()
    await b.pool.limiter.start()
    lease = await a.pool.acquire()
    assert lease.key.secret == SECRETS[0]
    a.pool.settle(lease, Feedback(Verdict.KEY_INVALID, None, reason="key rejected (HTTP 401)"))
    a.pool.release(lease)
    await asyncio.sleep(1.5)  # b reads states back every second
    shared_key = b.pool.keys[0]
    assert shared_key.state == "disabled"
    assert shared_key.reason == "key rejected (HTTP 401)"
    assert b.events == [f"key {shared_key.masked} disabled for this run: key rejected (HTTP 401)"]
    picked = [(await b.pool.acquire()).key.secret for _ in range(6)]
    assert picked == [SECRETS[1]] * 6
    assert b.pool.describe(time.time())[0]["state"] == "disabled"


async def test_a_429_seen_by_one_worker_cools_the_key_for_both(
    workers: Callable[..., Worker],
) -> None:
    a = workers(*SECRETS)
    b = workers(*SECRETS)
    lease = await a.pool.acquire()
    until = time.time() + 2.0
    a.pool.settle(lease, Feedback(Verdict.RATE_LIMITED, until, reason="429 rate limit"))
    a.pool.release(lease)
    await a.pool.limiter.backend.refresh()  # sends what is queued now, not within a second
    picked = [(await b.pool.acquire()).key.secret for _ in range(4)]
    assert SECRETS[0] not in picked[1:]  # b learned it on its first try, at the latest
    assert b.pool.keys[0].state == "cooling"
    assert b.pool.keys[0].until == pytest.approx(until, abs=1e-3)


async def test_two_workers_share_a_keys_concurrency_slots(
    workers: Callable[..., Worker],
) -> None:
    a = workers(SECRETS[0], concurrency=2)
    b = workers(SECRETS[0], concurrency=2)
    flying, most, done = 0, 0, 0

    async def request(worker: Worker) -> None:
        nonlocal flying, most, done
        while True:
            lease = await worker.pool.acquire()
            flying += 1
            most = max(most, flying)
            await asyncio.sleep(0.03)  # the request is out
            flying -= 1
            done += 1
            worker.pool.release(lease)

    tasks = [asyncio.create_task(request(w)) for w in (a, b) for _ in range(4)]
    await asyncio.sleep(1.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert most == 2  # both workers' requests together, never more than the key allows
    assert done >= 0.7 * 2 * 1.5 / 0.03  # and the slots are kept busy


# -- Redis restarting mid-run ----------------------------------------------------------------


@pytest.mark.parametrize("outage", [1.5, 0.2])
async def test_redis_restarting_midway_pauses_the_workers_without_a_burst(
    workers: Callable[..., Worker], private_redis: PrivateRedis, outage: float
) -> None:
    a = workers(SECRETS[0], url=private_redis.url, limits=["20/s"])
    b = workers(SECRETS[0], url=private_redis.url, limits=["20/s"])
    for worker in (a, b):
        await worker.pool.limiter.start()
        worker.saturate(6)
    await asyncio.sleep(1.5)
    private_redis.kill()  # everything Redis knew is gone
    killed = time.time()
    await asyncio.sleep(outage)
    # Twelve acquirers at 20/s had reserved up to 0.6 s ahead: those go, then nothing.
    during = sum(killed + 0.75 < t for t in a.granted + b.granted)
    private_redis.start()
    restarted = time.time()
    await asyncio.sleep(3.0)
    for worker in (a, b):
        await worker.stop()  # and no exception reached an acquirer
    granted = a.granted + b.granted
    assert during == 0  # nothing granted without Redis but what was reserved before
    # The run went on: after a second's grace (for requests other workers had reserved),
    # and as soon as each worker's next attempt found Redis again.
    after = [t for t in granted if t >= restarted]
    assert len(after) >= 0.9 * 20 * 1.5
    # No burst when it did: not even with requests reserved before the loss still to go.
    assert max_in_window(a.sent + b.sent, 1.0) <= 20
    for worker in (a, b):  # once, and only from a worker that found Redis gone
        expected = ["limiter: Redis unreachable, waiting", "limiter: meters reachable again"]
        assert worker.events in ([], expected) if outage < 1 else worker.events == expected


async def test_a_redis_that_refuses_the_url_is_a_configuration_error(redis_url: Any) -> None:
    # A database Redis does not have: said when the run starts, not as a failure of
    # every item.
    from urllib.parse import urlsplit

    from paceline.errors import ConfigError

    parts = urlsplit(redis_url.url)
    backend = open_meter_backend(parts._replace(path="/999").geturl(), prefix=redis_url.prefix)
    with pytest.raises(ConfigError, match="DB index"):
        await backend.start()
    await backend.aclose()
