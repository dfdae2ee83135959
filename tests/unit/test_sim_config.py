"""Simulator configuration: latency specs, key specs, CLI values, wire-format helpers."""

from __future__ import annotations

import random

import pytest

from paceline.sim import KeyLimits, SimConfig, parse_latency
from paceline.sim._wire import go_duration, mask_key, rfc3339
from paceline.sim.config import (
    FixedLatency,
    LognormalLatency,
    UniformLatency,
    parse_key_spec,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0.05", FixedLatency(0.05)),
        ("0", FixedLatency(0.0)),
        ("fixed:0.05", FixedLatency(0.05)),
        ("uniform:0.01,0.2", UniformLatency(0.01, 0.2)),
        ("lognormal:0.3,0.5", LognormalLatency(0.3, 0.5)),
        (" Uniform:1,1 ", UniformLatency(1.0, 1.0)),
    ],
)
def test_parse_latency_reads_every_form(spec: str, expected: object) -> None:
    assert parse_latency(spec) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("fast", "expected SECONDS"),
        ("gauss:1,2", "expected SECONDS"),
        ("uniform:0.1", "expected SECONDS"),
        ("uniform:0.3,0.1", "LOW must not exceed HIGH"),
        ("-1", "must not be negative"),
        ("lognormal:0,0.5", "MEDIAN must be above 0"),
        ("nan", "expected SECONDS"),
    ],
)
def test_parse_latency_rejects_bad_specs_in_one_line(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        parse_latency(spec)
    assert "\n" not in str(caught.value)


def test_latencies_sample_within_their_shape() -> None:
    rng = random.Random(1)
    assert FixedLatency(0.2).sample(rng) == 0.2
    assert all(0.01 <= UniformLatency(0.01, 0.2).sample(rng) <= 0.2 for _ in range(100))
    samples = sorted(LognormalLatency(0.3, 0.5).sample(rng) for _ in range(2_001))
    assert samples[1_000] == pytest.approx(0.3, rel=0.1)
    assert str(parse_latency("lognormal:0.3,0.5")) == "lognormal:0.3,0.5"


def test_key_specs_carry_limit_overrides() -> None:
    assert parse_key_spec("sk-a") == ("sk-a", {})
    assert parse_key_spec("sk-b:rpm=3:rpd=100") == ("sk-b", {"rpm": 3, "rpd": 100})
    with pytest.raises(ValueError, match="limits look like") as caught:
        parse_key_spec("sk-secret-1234:rpx=3")
    assert "secret" not in str(caught.value)  # the key is masked in the message


def test_from_cli_builds_keys_on_top_of_the_defaults() -> None:
    cfg = SimConfig.from_cli(
        ["sk-a", "sk-b:rpm=3"], rpm=60, tpm=1_000, revoked=["sk-old"], latency="0.01", seed=7
    )
    assert cfg.limits_for("sk-a") == KeyLimits(rpm=60, tpm=1_000)
    assert cfg.limits_for("sk-b") == KeyLimits(rpm=3, tpm=1_000)
    assert cfg.accepts("sk-a")
    assert not cfg.accepts("sk-old")
    assert not cfg.accepts("sk-unknown")
    assert cfg.latency == FixedLatency(0.01)


def test_from_cli_takes_comma_separated_strings_as_command_lines_give_them() -> None:
    cfg = SimConfig.from_cli(" sk-a, sk-b:rpm=3:tpm=50 ,", revoked="sk-old,", concurrency=2)
    assert cfg.keys is not None
    assert sorted(cfg.keys) == ["sk-a", "sk-b"]
    assert cfg.limits_for("sk-b") == KeyLimits(rpm=3, tpm=50, concurrency=2)
    assert cfg.revoked == frozenset({"sk-old"})
    assert SimConfig.from_cli(None, revoked=None).keys is None


def test_without_keys_any_non_empty_key_is_accepted_with_the_defaults() -> None:
    cfg = SimConfig.from_cli(rpm=5, revoked=["bad"])
    assert cfg.keys is None
    assert cfg.accepts("anything")
    assert not cfg.accepts("")
    assert not cfg.accepts("bad")
    assert cfg.limits_for("anything") == KeyLimits(rpm=5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"error_rate": 1.5}, "error_rate must be between 0 and 1"),
        ({"hang_rate": -0.1}, "hang_rate must be between 0 and 1"),
        ({"hang_seconds": -1.0}, "hang_seconds must be 0 or more"),
        ({"day_resets_tz": "Mars/Olympus"}, "unknown time zone"),
        ({"github_limit_status": 500}, "github_limit_status must be 403 or 429"),
    ],
)
def test_bad_settings_raise_readable_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig(**kwargs)  # type: ignore[arg-type]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rpm must be a positive whole number"):
        KeyLimits(rpm=0)


def test_config_repr_never_shows_a_whole_key() -> None:
    cfg = SimConfig(keys={"sk-very-secret-abcd": KeyLimits()}, revoked=frozenset({"sk-x-1234"}))
    assert "secret" not in repr(cfg)
    assert "sk-x" not in repr(cfg)
    assert "…abcd" in repr(cfg)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (1, "1s"),
        (20, "20s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (3_723, "1h2m3s"),
        (59.9561, "59.957s"),
    ],
)
def test_go_durations_read_like_openais(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_wire_helpers() -> None:
    assert mask_key("sk-abcdefxyz1") == "…xyz1"
    assert rfc3339(1_704_067_200.2) == "2024-01-01T00:00:01Z"  # rounded up: never early
