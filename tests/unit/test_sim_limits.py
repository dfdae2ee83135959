"""The simulated provider's per-key meters, driven by a fake clock."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from paceline.clock import FakeClock
from paceline.sim.config import KeyLimits
from paceline.sim.limits import HOUR, KeyMeter, Rejection, next_midnight

PACIFIC = ZoneInfo("America/Los_Angeles")


def epoch(text: str, tz: ZoneInfo = PACIFIC) -> float:
    """Epoch seconds of a local time such as ``2024-01-15 23:59``."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def admit(meter: KeyMeter, tokens: int = 0) -> None:
    """One request that is admitted and answered at once."""
    assert meter.try_acquire(tokens) is None
    meter.release()


def test_rpm_rejects_the_fourth_of_three_and_admits_when_the_window_slides() -> None:
    clock = FakeClock(start=1_000.0)
    meter = KeyMeter(KeyLimits(rpm=3), clock)
    for step in (20, 20, 5):  # requests at t=0, 20, 40; now t=45
        admit(meter)
        clock.advance(step)
    assert meter.try_acquire() == Rejection("rpm", 3, 3, 1, 15.0)
    clock.advance(14.9)
    assert isinstance(meter.try_acquire(), Rejection)
    clock.advance(0.1)  # t=60: the request of t=0 has left the window
    admit(meter)
    rejection = meter.try_acquire()
    assert rejection is not None
    assert rejection.retry_after == pytest.approx(20.0)  # until the request of t=20 leaves


def test_rpm_headers_report_remaining_and_time_to_full_reset() -> None:
    clock = FakeClock(start=1_000.0)
    meter = KeyMeter(KeyLimits(rpm=3), clock)
    admit(meter)
    clock.advance(30)
    admit(meter)
    window = meter.state().rpm
    assert window is not None
    assert (window.limit, window.remaining, window.used) == (3, 1, 2)
    assert window.resets_at == 1_090.0  # the newest request leaves the window then


def test_tpm_counts_tokens_and_a_rejection_spends_nothing() -> None:
    clock = FakeClock()
    meter = KeyMeter(KeyLimits(rpm=10, tpm=100), clock)
    admit(meter, tokens=60)
    rejection = meter.try_acquire(50)
    assert rejection == Rejection("tpm", 100, 60, 50, 60.0)
    state = meter.state()
    assert state.rpm is not None
    assert state.rpm.used == 1
    assert state.tpm is not None
    assert state.tpm.remaining == 40
    admit(meter, tokens=40)
    clock.advance(60)
    admit(meter, tokens=100)


def test_a_token_bucket_refills_as_it_goes_not_a_minute_later() -> None:
    clock = FakeClock(start=1_000.0)
    meter = KeyMeter(KeyLimits(tpm=600), clock, token_bucket=True)  # 10 tokens a second
    admit(meter, tokens=600)  # full at the start: a whole minute's tokens at once
    rejection = meter.try_acquire(50)
    assert rejection is not None and rejection.retry_after == pytest.approx(5.0)
    window = meter.state().tpm
    assert window is not None
    assert (window.remaining, window.resets_at) == (0, pytest.approx(1_060.0))
    clock.advance(5)  # a sliding minute would hold everything until t=60
    admit(meter, tokens=50)
    clock.advance(3600)
    assert meter.state().tpm.remaining == 600  # type: ignore[union-attr]  # never above full
    # What an answer did not use of its reservation comes back to a bucket (Anthropic's
    # estimate adjusted to the output made); a sliding minute keeps it (OpenAI's).
    assert meter.try_acquire(500) is None
    meter.release(unused_tokens=300)
    assert meter.state().tpm.remaining == 400  # type: ignore[union-attr]
    sliding = KeyMeter(KeyLimits(tpm=600), clock)
    assert sliding.try_acquire(500) is None
    sliding.release(unused_tokens=300)
    assert sliding.state().tpm.remaining == 100  # type: ignore[union-attr]


def test_a_request_larger_than_the_token_limit_can_never_fit() -> None:
    meter = KeyMeter(KeyLimits(tpm=100), FakeClock())
    rejection = meter.try_acquire(101)
    assert rejection is not None
    assert rejection.retry_after is None


def test_a_token_can_start_with_part_of_its_hour_spent() -> None:
    # A token used elsewhere before: 2 of 5,000 left, the window resetting in 20 s.
    start = 1_700_000_000.0
    clock = FakeClock(start=start)
    meter = KeyMeter(KeyLimits(rph=5000, rph_left=2, rph_reset=20), clock)
    admit(meter)
    admit(meter)
    assert meter.try_acquire() == Rejection("rph", 5000, 5000, 1, 20.0)
    window = meter.state().rph
    assert window is not None
    assert (window.remaining, window.resets_at) == (0, start + 20)
    clock.advance(20)  # a fresh hour, opened by the next request
    admit(meter)
    window = meter.state().rph
    assert window is not None
    assert (window.remaining, window.resets_at) == (4999, start + 20 + HOUR)


def test_rph_is_a_fixed_window_opened_by_the_first_request() -> None:
    start = 1_700_000_000.0
    clock = FakeClock(start=start)
    meter = KeyMeter(KeyLimits(rph=2), clock)
    window = meter.state().rph
    assert window is not None
    assert window.resets_at == start + HOUR
    clock.advance(100)
    admit(meter)  # opens the window: it closes at start + 100 + 1 h, whatever comes later
    clock.advance(500)
    admit(meter)
    rejection = meter.try_acquire()
    assert rejection == Rejection("rph", 2, 2, 1, HOUR - 500)
    window = meter.state().rph
    assert window is not None
    assert (window.remaining, window.resets_at) == (0, start + 100 + HOUR)
    clock.advance(HOUR - 500)  # the window closes: a full hour's budget again
    admit(meter)
    window = meter.state().rph
    assert window is not None
    assert (window.remaining, window.resets_at) == (1, start + 100 + 2 * HOUR)


def test_daily_quota_resets_at_pacific_midnight() -> None:
    clock = FakeClock(start=epoch("2024-01-15 23:58:30"))
    meter = KeyMeter(KeyLimits(rpd=2), clock, PACIFIC)
    admit(meter)
    admit(meter)
    midnight = epoch("2024-01-16 00:00")
    assert midnight == dt.datetime(2024, 1, 16, 8, tzinfo=dt.UTC).timestamp()  # PST is UTC-8
    assert meter.try_acquire() == Rejection("rpd", 2, 2, 1, 90.0)
    window = meter.state().rpd
    assert window is not None
    assert window.resets_at == midnight
    clock.advance(89.999)
    assert isinstance(meter.try_acquire(), Rejection)
    clock.advance(0.001)
    admit(meter)
    window = meter.state().rpd
    assert window is not None
    assert (window.remaining, window.resets_at) == (1, epoch("2024-01-17 00:00"))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # an ordinary day: midnight PST is 08:00 UTC
        ("2024-01-15 12:00", dt.datetime(2024, 1, 16, 8, tzinfo=dt.UTC)),
        # just after midnight: the *next* midnight, a whole day away
        ("2024-01-16 00:00", dt.datetime(2024, 1, 17, 8, tzinfo=dt.UTC)),
        # the 23-hour day of the spring change ends at midnight PDT, 07:00 UTC
        ("2024-03-10 00:30", dt.datetime(2024, 3, 11, 7, tzinfo=dt.UTC)),
        # the 25-hour day of the autumn change ends at midnight PST again
        ("2024-11-03 00:30", dt.datetime(2024, 11, 4, 8, tzinfo=dt.UTC)),
    ],
)
def test_next_midnight_follows_the_local_calendar(now: str, expected: dt.datetime) -> None:
    assert next_midnight(epoch(now), PACIFIC) == expected.timestamp()


def test_daily_window_follows_the_configured_zone() -> None:
    utc = ZoneInfo("UTC")
    clock = FakeClock(start=epoch("2024-01-15 23:59", utc))
    meter = KeyMeter(KeyLimits(rpd=1), clock, utc)
    admit(meter)
    rejection = meter.try_acquire()
    assert rejection is not None
    assert rejection.retry_after == 60.0


def test_concurrency_counts_requests_in_flight() -> None:
    meter = KeyMeter(KeyLimits(concurrency=2), FakeClock())
    assert meter.try_acquire() is None
    assert meter.try_acquire() is None
    assert meter.try_acquire() == Rejection("concurrency", 2, 2, 1, 1.0)
    meter.release()
    assert meter.try_acquire() is None
    assert meter.state().in_flight == 2


def test_the_longest_full_window_is_reported_first() -> None:
    clock = FakeClock(start=epoch("2024-01-15 12:00"))
    meter = KeyMeter(KeyLimits(rpm=1, rpd=1), clock, PACIFIC)
    admit(meter)
    rejection = meter.try_acquire()
    assert rejection is not None
    assert (rejection.meter, rejection.retry_after) == ("rpd", 12 * HOUR)


def test_unlimited_key_admits_everything_and_reports_no_meters() -> None:
    meter = KeyMeter(KeyLimits(), FakeClock())
    for _ in range(1_000):
        admit(meter, tokens=1_000)
    state = meter.state()
    assert (state.rpm, state.tpm, state.rpd, state.rph) == (None, None, None, None)
