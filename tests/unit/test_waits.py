"""The one gate every wait passes: finite, not negative, at most a day ahead."""

from __future__ import annotations

import math

import pytest

from paceline._waits import (
    MAX_WAIT,
    Waits,
    epoch_or_delay,
    sane_delay,
    sane_period,
    sane_until,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, 0.0),
        (1.5, 1.5),
        (MAX_WAIT, MAX_WAIT),
        (MAX_WAIT + 1, None),
        (-0.1, None),
        (math.inf, None),
        (-math.inf, None),
        (math.nan, None),
    ],
)
def test_sane_delay(seconds: float, expected: float | None) -> None:
    assert sane_delay(seconds) == expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (NOW + 10, NOW + 10),
        (NOW + MAX_WAIT, NOW + MAX_WAIT),
        (NOW + MAX_WAIT + 1, None),
        (NOW - 10, NOW),  # already past: the wait is over
        (-1e12, NOW),
        (math.inf, None),
        (math.nan, None),
    ],
)
def test_sane_until(at: float, expected: float | None) -> None:
    assert sane_until(at, NOW) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (60.0, 60.0),
        (86_400.0 * 30, 86_400.0 * 30),
        (0.0, None),
        (-60.0, None),
        (1e-9, None),
        (1e12, None),
        (math.inf, None),
        (math.nan, None),
    ],
)
def test_sane_period(seconds: float, expected: float | None) -> None:
    assert sane_period(seconds) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30.0, NOW + 30),
        (1_700_000_060.0, 1_700_000_060.0),
        (1_700_000_060_000.0, 1_700_000_060.0),
        (1_700_000_060_000_000.0, 1_700_000_060.0),
        (1_700_000_060_000_000_000.0, 1_700_000_060.0),
    ],
)
def test_a_reset_number_is_a_delay_or_an_epoch_in_any_unit(value: float, expected: float) -> None:
    assert epoch_or_delay(value, NOW) == pytest.approx(expected)


def test_waits_keeps_the_first_thing_it_ignored() -> None:
    waits = Waits(NOW)
    assert waits.after(5, "a") == NOW + 5
    assert waits.ignored is None
    assert waits.after(math.inf, "b") is None
    assert waits.until(NOW + 1e9, "c") is None
    assert waits.period(-1.0, "d") is None
    assert waits.ignored == "ignored b of inf: not a finite number"


def test_waits_says_how_far_ahead_an_ignored_time_was() -> None:
    waits = Waits(NOW)
    assert waits.until(NOW + 90_000, "x-ratelimit-reset") is None
    assert waits.ignored == "ignored x-ratelimit-reset 90000 s ahead: more than a day"
