"""FakeClock: time moves only when a test says so, and sleepers wake in wake-up order."""

from __future__ import annotations

import asyncio

from paceline.clock import FakeClock


async def settle() -> None:
    """Let every task that can run now take its turn (no time passes on any clock)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_time_and_monotonic_move_only_with_advance() -> None:
    clock = FakeClock(start=1_000.0)
    assert (clock.time(), clock.monotonic()) == (1_000.0, 0.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1_002.5, 2.5)


async def test_sleepers_wake_only_once_time_passes_their_wake_up_and_in_that_order() -> None:
    clock = FakeClock(start=100.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.time()))

    tasks = [
        asyncio.create_task(sleeper(name, seconds))
        for name, seconds in [("late", 10), ("early", 5), ("tie-a", 7), ("tie-b", 7)]
    ]
    await settle()
    assert woke == []

    clock.advance(4.9)
    await settle()
    assert woke == []

    clock.advance(0.1)  # t=105: exactly the wake-up time of "early"
    await settle()
    assert woke == [("early", 105.0)]

    clock.advance(3)  # t=108: both 7-second sleepers, in the order they went to sleep
    await settle()
    assert woke == [("early", 105.0), ("tie-a", 108.0), ("tie-b", 108.0)]

    clock.advance(100)
    await asyncio.gather(*tasks)
    assert [name for name, _ in woke] == ["early", "tie-a", "tie-b", "late"]


async def test_one_big_advance_wakes_sleepers_in_wake_up_order_not_arrival_order() -> None:
    clock = FakeClock()
    woke: list[int] = []

    async def sleeper(seconds: int) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    tasks = [asyncio.create_task(sleeper(s)) for s in (30, 10, 20)]
    await settle()
    clock.advance(60)
    await asyncio.gather(*tasks)
    assert woke == [10, 20, 30]


async def test_sleep_of_zero_or_less_returns_without_advance() -> None:
    clock = FakeClock()
    await asyncio.wait_for(clock.sleep(0), timeout=1)
    await asyncio.wait_for(clock.sleep(-3), timeout=1)
    assert clock.monotonic() == 0.0


async def test_a_cancelled_sleeper_does_not_stop_the_others_waking() -> None:
    clock = FakeClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    doomed = asyncio.create_task(sleeper("doomed", 1))
    kept = asyncio.create_task(sleeper("kept", 2))
    await settle()
    doomed.cancel()
    await settle()
    clock.advance(5)
    await kept
    assert woke == ["kept"]
    assert doomed.cancelled()
