"""Limits and their meters: parsing, GCRA reservations, daily counters, time zones."""

from __future__ import annotations

import bisect
import datetime as dt

import pytest

from paceline.errors import ConfigError
from paceline.limits import Limit, day_start, next_day_start, parse_limit, zone
from paceline.meters.local import DayMeter, GcraMeter, WindowMeter

T0 = 1_700_000_000.0
LA = "America/Los_Angeles"


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


#: Grant times are sums of many float intervals at epoch magnitude: a grant a few microseconds
#: inside a window's end is rounding (1 ppm of the rate), far below any network's jitter.
EPSILON = 1e-3


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` that any half-open window ``[s, s + window)`` holds."""
    times = sorted(times)
    return max(
        bisect.bisect_left(times, t + window - EPSILON) - bisect.bisect_left(times, t)
        for t in times
    )


# -- parse_limit ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15/minute", Limit(15, 60.0)),
        ("1500/day", Limit(1500, 86400.0)),
        ("5000/hour", Limit(5000, 3600.0)),
        ("60/3s", Limit(60, 3.0)),
        ("1000000 tokens/minute", Limit(1_000_000, 60.0, "tokens")),
        ("8 concurrent", Limit(8, 0.0, "concurrent")),
        ("1_000/min", Limit(1000, 60.0)),
        ("1,000/min", Limit(1000, 60.0)),
        ("15 requests/minute", Limit(15, 60.0)),
        ("15 per minute", Limit(15, 60.0)),
        ("  15 / MINUTE ", Limit(15, 60.0)),
        ("100 tokens per 2h", Limit(100, 7200.0, "tokens")),
        ("10/0.5s", Limit(10, 0.5)),
        ("4 in-flight", Limit(4, 0.0, "concurrent")),
    ],
)
def test_parse_limit(text: str, expected: Limit) -> None:
    assert parse_limit(text) == expected


def test_parse_limit_passes_a_limit_through() -> None:
    limit = Limit(3, 60.0)
    assert parse_limit(limit) is limit


@pytest.mark.parametrize(
    "text",
    ["", "fast", "15", "15/fortnight", "15/", "/minute", "-5/minute", "1.5/minute", "x/day"],
)
def test_a_malformed_limit_is_a_config_error_showing_the_accepted_forms(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_limit(text)
    message = str(info.value)
    assert repr(text) in message
    assert "15/minute" in message
    assert "8 concurrent" in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0/minute", "limit 0/minute: the count must be at least 1"),
        ("0 concurrent", "limit 0 concurrent: the count must be at least 1"),
        ("15/0s", "limit 15/0s: the window must be positive"),
    ],
)
def test_a_zero_limit_or_window_is_a_config_error(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_limit(text)
    assert str(info.value) == says


@pytest.mark.parametrize("value", [15, 1.5, None, ["15/minute"]])
def test_a_limit_that_is_not_text_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="15/minute"):
        parse_limit(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "described"),
    [
        ("15/minute", "15/minute"),
        ("1500/day", "1500/day"),
        ("5000/hour", "5000/hour"),
        ("60/3s", "60/3s"),
        ("1000000 tokens/minute", "1000000 tokens/minute"),
        ("8 concurrent", "8 concurrent"),
        ("1_000/min", "1000/minute"),
        ("10/2h", "10/2h"),
        ("10/90s", "10/90s"),
        ("10/1.5m", "10/90s"),
        ("10/0.5s", "10/0.5s"),
        ("10/2d", "10/2d"),
        ("10/s", "10/s"),
    ],
)
def test_describe_round_trips(text: str, described: str) -> None:
    limit = parse_limit(text)
    assert limit.describe() == described
    assert parse_limit(limit.describe()) == limit


def test_daily_and_per_minute() -> None:
    assert parse_limit("1500/day").daily
    assert parse_limit("3/2d").daily
    assert not parse_limit("5000/hour").daily
    assert not parse_limit("8 concurrent").daily
    assert parse_limit("60/3s").per_minute() == 1200
    assert parse_limit("1500/day").per_minute() == pytest.approx(1500 / 1440)


def test_an_unknown_time_zone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        zone("Mars/Olympus")
    assert zone(None) is dt.UTC


# -- GCRA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "burst"), [(15, 1), (60, 1), (500, 6), (5000, 51)])
def test_the_default_burst_is_one_percent_and_at_least_one(count: int, burst: int) -> None:
    assert GcraMeter(Limit(count, 60.0)).burst == burst


@pytest.mark.parametrize("count", [15, 60, 500, 5000])
def test_a_small_burst_goes_at_once_then_requests_are_spaced(count: int) -> None:
    meter = GcraMeter(Limit(count, 60.0))
    times = [meter.reserve(1, T0) for _ in range(meter.burst + 3)]
    assert times[: meter.burst] == [T0] * meter.burst
    gaps = [b - a for a, b in zip(times[meter.burst - 1 :], times[meter.burst :], strict=False)]
    assert gaps == pytest.approx([meter.interval] * 3, abs=1e-6)
    assert meter.interval == pytest.approx(60.0 / (count - meter.burst + 1))


@pytest.mark.parametrize("count", [15, 60, 500, 5000])
@pytest.mark.parametrize("style", ["all at once", "one after another"])
def test_a_saturated_meter_never_overruns_any_window_and_keeps_the_rate(
    count: int, style: str
) -> None:
    window = 60.0
    meter = GcraMeter(Limit(count, window))
    times: list[float] = []
    now = T0
    while now < T0 + 4 * window:
        at = meter.reserve(1, now)
        times.append(at)
        if style == "one after another":
            now = at  # the next request is asked for when this one is sent
        elif len(times) % 50 == 0:
            now = at  # many reservations made at the same moment, then time moves on
    assert max_in_window(times, window) <= count
    steady = sum(T0 + window <= t < T0 + 3 * window for t in times)
    assert steady >= 0.98 * 2 * count


def test_reservations_count_tokens() -> None:
    meter = GcraMeter(Limit(1000, 60.0, "tokens"))  # burst 11 tokens
    first = meter.reserve(300, T0)
    second = meter.reserve(300, T0)
    assert first == T0
    assert second == pytest.approx(T0 + 300 * meter.interval)
    # small requests fit in the burst behind a large one
    assert meter.ready_at(5, T0) < meter.ready_at(300, T0)


def test_a_request_larger_than_the_burst_goes_when_the_meter_is_empty() -> None:
    meter = GcraMeter(Limit(1000, 60.0, "tokens"))
    assert meter.reserve(5000, T0) == T0  # larger than the whole limit, even
    # then it waits out its own cost before the next one
    assert meter.ready_at(1, T0) == pytest.approx(T0 + 5000 * meter.interval - 10 * meter.interval)
    later = T0 + 10 * 5000 * meter.interval
    assert meter.reserve(5000, later) == later


def tokens_in_worst_window(sent: list[tuple[float, int]], window: float) -> int:
    return max(
        sum(size for at, size in sent if start <= at < start + window - EPSILON)
        for start, _ in sent
    )


def test_a_token_window_is_not_overrun_by_requests_within_the_burst() -> None:
    meter = GcraMeter(Limit(10_000, 60.0, "tokens"))  # burst 101 tokens
    sizes = [37, 90, 5, 101, 12, 64, 18, 3, 77] * 120
    sent = [(meter.reserve(size, T0), size) for size in sizes]
    assert tokens_in_worst_window(sent, 60.0) <= 10_000


def test_a_token_window_is_not_overrun_by_requests_larger_than_the_burst() -> None:
    meter = WindowMeter(Limit(10_000, 60.0, "tokens"))
    sizes = [37, 900, 5, 2500, 120, 64, 1800, 3, 777] * 60
    sent = [(meter.reserve(size, T0), size) for size in sizes]
    assert tokens_in_worst_window(sent, 60.0) <= 10_000


def test_a_token_window_with_large_requests_is_used_to_the_full() -> None:
    # 800-token requests in a 1,000 tokens/minute window: one a minute fits, not less.
    meter = WindowMeter(Limit(1_000, 60.0, "tokens"))
    times = [meter.reserve(800, T0) for _ in range(5)]
    assert times == pytest.approx([T0 + 60.001 * n for n in range(5)], abs=0.01)


def test_settling_fewer_tokens_lets_the_next_request_go_earlier() -> None:
    estimated, settled = (
        GcraMeter(Limit(1000, 60.0, "tokens")),
        GcraMeter(Limit(1000, 60.0, "tokens")),
    )
    for meter in (estimated, settled):
        meter.reserve(800, T0)
    settled.adjust(100 - 800)  # the answer said 100 tokens were used
    assert settled.ready_at(800, T0) < estimated.ready_at(800, T0)
    assert settled.ready_at(800, T0) == pytest.approx(T0 + 100 * settled.interval)


def test_settling_more_tokens_pushes_the_next_request_back() -> None:
    meter = GcraMeter(Limit(1000, 60.0, "tokens"))
    meter.reserve(100, T0)
    before = meter.ready_at(100, T0)
    meter.adjust(400)
    assert meter.ready_at(100, T0) == pytest.approx(before + 400 * meter.interval)


def test_a_cost_of_zero_is_always_ready() -> None:
    meter = GcraMeter(Limit(1, 60.0))
    meter.reserve(1, T0)
    assert meter.reserve(0, T0) == T0
    assert meter.ready_at(1, T0) == T0 + 60.0


def test_exhaust_until_holds_the_meter_until_then() -> None:
    meter = GcraMeter(Limit(500, 60.0))
    meter.exhaust_until(T0 + 42)
    assert meter.ready_at(1, T0) == pytest.approx(T0 + 42)
    assert meter.reserve(1, T0 + 42) == pytest.approx(T0 + 42)


def test_used_counts_what_is_reserved_in_the_window() -> None:
    meter = GcraMeter(Limit(60, 60.0))
    for _ in range(10):
        meter.reserve(1, T0)
    assert meter.used(T0) == pytest.approx(10)
    assert meter.used(T0 + 4) == pytest.approx(6)
    assert meter.used(T0 + 100) == 0


def test_a_slower_factor_spaces_requests_further() -> None:
    meter = GcraMeter(Limit(60, 60.0))
    meter.factor = 0.5
    assert meter.interval == pytest.approx(2.0)


def test_set_limit_keeps_the_reservations_and_applies_the_new_rate() -> None:
    meter = GcraMeter(Limit(500, 60.0))
    meter.reserve(1, T0)
    meter.set_limit(Limit(60, 60.0))
    assert meter.burst == 1
    assert meter.interval == pytest.approx(1.0)
    assert meter.ready_at(1, T0) > T0


# -- DayMeter ------------------------------------------------------------------------------


def test_a_day_meter_counts_until_its_limit_then_waits_for_midnight() -> None:
    now = utc(2024, 1, 15, 20, 0)
    meter = DayMeter(Limit(3, 86400.0), zone(None))
    assert [meter.reserve(1, now) for _ in range(3)] == [now] * 3
    assert meter.used(now) == 3
    assert meter.ready_at(1, now) == utc(2024, 1, 16)
    assert meter.reserve(1, now) == utc(2024, 1, 16)
    assert meter.used(now) == 3  # a request that must wait is not counted
    # at midnight the count starts again
    assert meter.reserve(1, utc(2024, 1, 16)) == utc(2024, 1, 16)
    assert meter.used(utc(2024, 1, 16)) == 1


@pytest.mark.parametrize(
    ("now", "midnight"),
    [
        # winter: PST, UTC-8
        (utc(2024, 1, 15, 20, 0), utc(2024, 1, 16, 8, 0)),
        (utc(2024, 1, 16, 7, 59), utc(2024, 1, 16, 8, 0)),
        (utc(2024, 1, 16, 8, 0), utc(2024, 1, 17, 8, 0)),
        # summer: PDT, UTC-7
        (utc(2024, 7, 15, 19, 0), utc(2024, 7, 16, 7, 0)),
        (utc(2024, 7, 16, 1, 0), utc(2024, 7, 16, 7, 0)),
    ],
)
def test_a_daily_quota_resets_at_midnight_in_its_time_zone(now: float, midnight: float) -> None:
    meter = DayMeter(Limit(2, 86400.0), zone(LA))
    meter.reserve(1, now)
    meter.reserve(1, now)
    assert meter.ready_at(1, now) == midnight
    assert meter.ready_at(1, midnight) == midnight  # a new day: ready at once
    assert meter.used(midnight) == 0


def test_days_around_a_change_of_clocks_are_23_and_25_hours_long() -> None:
    tz = zone(LA)
    spring = utc(2024, 3, 10, 19, 0)  # noon PDT, the day clocks go forward
    assert day_start(spring, tz) == utc(2024, 3, 10, 8, 0)
    assert next_day_start(spring, tz) - day_start(spring, tz) == 23 * 3600
    autumn = utc(2024, 11, 3, 20, 0)  # noon PST, the day clocks go back
    assert next_day_start(autumn, tz) - day_start(autumn, tz) == 25 * 3600


def test_a_several_day_window_resets_after_that_many_days() -> None:
    now = utc(2024, 1, 15, 20, 0)
    meter = DayMeter(Limit(1, 2 * 86400.0), zone(None))
    meter.reserve(1, now)
    assert meter.ready_at(1, now) == utc(2024, 1, 17)


def test_restore_starts_from_what_the_store_says_was_spent() -> None:
    now = utc(2024, 1, 15, 20, 0)
    meter = DayMeter(Limit(1500, 86400.0), zone(LA))
    meter.restore(1498, now)
    assert meter.used(now) == 1498
    assert meter.reserve(1, now) == now
    assert meter.reserve(1, now) == now
    assert meter.reserve(1, now) == utc(2024, 1, 16, 8, 0)


def test_a_day_meter_lets_a_request_larger_than_its_limit_go_when_empty() -> None:
    now = utc(2024, 1, 15, 20, 0)
    meter = DayMeter(Limit(1000, 86400.0, "tokens"), zone(None))
    assert meter.reserve(5000, now) == now
    assert meter.ready_at(1, now) == utc(2024, 1, 16)


def test_a_day_meter_settles_and_can_be_exhausted() -> None:
    now = utc(2024, 1, 15, 20, 0)
    meter = DayMeter(Limit(10, 86400.0), zone(None))
    meter.reserve(8, now)
    meter.adjust(-5)
    assert meter.used(now) == 3
    meter.adjust(-50)
    assert meter.used(now) == 0
    meter.exhaust_until(utc(2024, 1, 16))
    assert meter.used(now) == 10
    assert meter.ready_at(1, now) == utc(2024, 1, 16)
