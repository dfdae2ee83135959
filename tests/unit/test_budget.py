"""Per-day budgets count local days, across daylight-saving changes too."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest

from paceline.engine.budget import local_day_start


@pytest.fixture
def berlin() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def at(*args: int) -> float:
    return dt.datetime(*args, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


@pytest.mark.usefixtures("berlin")
@pytest.mark.parametrize(
    ("moment", "midnight"),
    [
        ((2026, 3, 29, 12, 0), (2026, 3, 29)),  # clocks went forward at 02:00: a 23-hour day
        ((2026, 3, 29, 1, 30), (2026, 3, 29)),
        ((2026, 3, 30, 0, 30), (2026, 3, 30)),
        ((2026, 10, 25, 23, 59), (2026, 10, 25)),  # clocks went back: a 25-hour day
        ((2026, 10, 25, 2, 30), (2026, 10, 25)),
        ((2026, 7, 1, 0, 0), (2026, 7, 1)),
    ],
)
def test_the_local_day_starts_at_local_midnight_on_any_day(
    moment: tuple[int, ...], midnight: tuple[int, int, int]
) -> None:
    assert local_day_start(at(*moment)) == at(*midnight)


@pytest.mark.usefixtures("berlin")
def test_consecutive_days_around_a_change_are_23_and_25_hours_apart() -> None:
    spring = local_day_start(at(2026, 3, 30, 12)) - local_day_start(at(2026, 3, 29, 12))
    autumn = local_day_start(at(2026, 10, 26, 12)) - local_day_start(at(2026, 10, 25, 12))
    assert (spring, autumn) == (23 * 3600, 25 * 3600)
