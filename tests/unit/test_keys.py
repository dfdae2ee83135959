"""KeyPool: keys from the environment, never shown in full, rotated, cooled and disabled."""

from __future__ import annotations

import asyncio
import math
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from paceline.clock import FakeClock
from paceline.errors import ConfigError
from paceline.feedback import Feedback, Verdict
from paceline.keys import Cost, Key, KeyPool, NoUsableKey, describe_state, shown_until
from paceline.limiter import Lease

LONG = "sk-live-0123456789abcdef"
SHORT = "zq-short-key"


def secrets(pool: KeyPool) -> list[str]:
    return [k.secret for k in pool.keys]


async def settle() -> None:
    """Let every task that can run now take its turn (no time passes on any clock)."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- from_env ----------------------------------------------------------------------------


def test_numbered_variables_are_ordered_by_number() -> None:
    environ = {"P10": "k10", "P_2": "k2", "P1": "k1", "PATH": "/bin", "P_X": "nope"}
    pool = KeyPool.from_env("P", env_file=None, environ=environ)
    assert secrets(pool) == ["k1", "k2", "k10"]


def test_a_comma_separated_variable_gives_several_keys() -> None:
    pool = KeyPool.from_env("P", env_file=None, environ={"P": "ka, kb,,kc ,"})
    assert secrets(pool) == ["ka", "kb", "kc"]


def test_numbered_and_comma_separated_variables_together_without_repeats() -> None:
    environ = {"P_2": "k2", "P_1": "k1", "P": "kx,k1"}
    pool = KeyPool.from_env("P", env_file=None, environ=environ)
    assert secrets(pool) == ["k1", "k2", "kx"]


def test_keys_come_from_an_env_file_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("P_1=from-file-1\nP_2=from-file-2\n# P_3=commented-out\n")
    pool = KeyPool.from_env("P", env_file=env_file, environ={"P_1": "from-env-1"})
    assert secrets(pool) == ["from-env-1", "from-file-2"]


def test_a_missing_env_file_is_not_an_error(tmp_path: Path) -> None:
    pool = KeyPool.from_env("P", env_file=tmp_path / "absent.env", environ={"P_1": "k1"})
    assert secrets(pool) == ["k1"]


async def test_no_keys_is_a_config_error_when_a_run_needs_them_naming_the_variables() -> None:
    # Loading a job file where its keys are not set (status, export on another machine)
    # works; a run binding the pool, or a request, says what to set.
    pool = KeyPool.from_env("OPENAI_KEY", env_file=None, environ={"OPENAI_KEY_1": "  "})
    assert pool.keys == []
    assert pool.describe(0.0) == []
    assert not pool.limited
    assert pool.redact("text") == "text"
    for needs_keys in (
        lambda: pool.bind(FakeClock(), lambda message: None),
        pool.require_keys,
    ):
        with pytest.raises(ConfigError) as info:
            needs_keys()
        message = str(info.value)
        assert message.startswith("no keys found: set OPENAI_KEY_1")
        assert "OPENAI_KEY=" in message
    with pytest.raises(ConfigError, match="no keys found"):
        await pool.acquire()


def test_an_empty_key_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no keys"):
        KeyPool(["", "  "])


# -- masking and redaction ---------------------------------------------------------------


def test_a_long_key_shows_only_its_last_four_characters() -> None:
    assert Key(LONG).masked == "…cdef"


def test_a_short_key_shows_no_piece_of_itself() -> None:
    masked = Key(SHORT).masked
    assert masked.startswith("…")
    assert len(masked) == 5
    assert not any(SHORT[i : i + 2] in masked for i in range(len(SHORT) - 1))


def test_two_keys_with_the_same_ending_are_told_apart_by_fingerprint() -> None:
    a, b = Key("sk-aaaaaaaaaaaa-1234"), Key("sk-bbbbbbbbbbbb-1234")
    assert a.masked == b.masked
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize("secret", [LONG, SHORT])
def test_repr_and_str_never_contain_the_secret(secret: str) -> None:
    key = Key(secret)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert secret not in text
        assert key.masked in text
    assert secret not in repr(KeyPool([secret]).keys)


def test_redact_replaces_secrets_also_when_url_quoted() -> None:
    odd = "sk/live+key=0123456789"
    pool = KeyPool([LONG, odd])
    quoted = urllib.parse.quote(odd, safe="")
    text = f"Authorization: Bearer {LONG}; GET /v1?key={quoted} and again {odd}"
    redacted = pool.redact(text)
    assert LONG not in redacted
    assert odd not in redacted
    assert quoted not in redacted
    assert redacted == "Authorization: Bearer …cdef; GET /v1?key=…6789 and again …6789"


def test_redact_leaves_text_without_secrets_alone() -> None:
    text = "HTTP 500 from POST https://api.example.com/v1"
    assert KeyPool([LONG]).redact(text) == text


# -- how a key travels -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "headers", "params"),
    [
        ("bearer", {"Authorization": f"Bearer {LONG}"}, {}),
        ("token", {"Authorization": f"token {LONG}"}, {}),
        ("header:X-Api-Key", {"X-Api-Key": LONG}, {}),
        ("query:key", {}, {"key": LONG}),
    ],
)
def test_headers_and_params_for_each_auth(
    auth: str, headers: dict[str, str], params: dict[str, str]
) -> None:
    pool = KeyPool([LONG], auth=auth)
    assert pool.headers_and_params(pool.keys[0]) == (headers, params)


@pytest.mark.parametrize("auth", ["basic", "header:", "query:", "header:X Api", "Bearer"])
def test_an_unknown_auth_is_a_config_error(auth: str) -> None:
    with pytest.raises(ConfigError, match="auth"):
        KeyPool([LONG], auth=auth)


def test_from_env_passes_auth_on() -> None:
    pool = KeyPool.from_env("P", env_file=None, environ={"P": "k"}, auth="query:api_key")
    assert pool.headers_and_params(pool.keys[0]) == ({}, {"api_key": "k"})


# -- acquire, settle and release ---------------------------------------------------------


def rate_limited(retry_at: float) -> Feedback:
    return Feedback(Verdict.RATE_LIMITED, retry_at, reason="429 rate limit")


INVALID = Feedback(Verdict.KEY_INVALID, None, reason="key rejected (HTTP 401)")


async def lease_on(pool: KeyPool, secret: str) -> Lease:
    """A lease on the key ``secret`` (keys without limits are handed out in turn)."""
    for _ in range(len(pool.keys)):
        lease = await pool.acquire()
        pool.release(lease)
        if lease.key.secret == secret:
            return lease
    raise AssertionError(f"no lease on {secret}")


async def test_acquire_round_robins_across_keys() -> None:
    pool = KeyPool(["ka", "kb", "kc"], clock=FakeClock())
    picked = [(await pool.acquire()).key.secret for _ in range(7)]
    assert picked == ["ka", "kb", "kc", "ka", "kb", "kc", "ka"]


async def test_a_429_cools_that_key_for_its_retry_after() -> None:
    clock = FakeClock()
    pool = KeyPool(["ka", "kb", "kc"], clock=clock)
    kb = pool.keys[1]
    pool.settle(await lease_on(pool, "kb"), rate_limited(clock.time() + 10))
    assert kb.state == "cooling"

    assert "kb" not in [(await pool.acquire()).key.secret for _ in range(6)]
    clock.advance(9.9)
    assert "kb" not in [(await pool.acquire()).key.secret for _ in range(6)]
    clock.advance(0.1)
    leases = [await pool.acquire() for _ in range(3)]
    assert "kb" in [lease.key.secret for lease in leases]
    assert kb.describe_state(clock.time()) == "ready"
    pool.settle(next(x for x in leases if x.key is kb), Feedback(Verdict.OK, None))
    assert kb.state == "ready"
    assert kb.rate_limited == 1


async def test_acquire_waits_for_the_first_key_to_cool_down_when_all_are_cooling() -> None:
    clock = FakeClock()
    pool = KeyPool(["ka", "kb"], clock=clock)
    pool.settle(await lease_on(pool, "ka"), rate_limited(clock.time() + 30))
    pool.settle(await lease_on(pool, "kb"), rate_limited(clock.time() + 5))

    waiting = asyncio.create_task(pool.acquire())
    await settle()
    assert not waiting.done()
    clock.advance(4)
    await settle()
    assert not waiting.done()
    clock.advance(1)
    lease = await asyncio.wait_for(waiting, timeout=1)
    assert lease.key.secret == "kb"


async def test_a_401_disables_the_key_for_good() -> None:
    clock = FakeClock()
    pool = KeyPool(["ka", "kb"], clock=clock)
    pool.settle(await lease_on(pool, "ka"), INVALID)
    clock.advance(3600)
    assert {(await pool.acquire()).key.secret for _ in range(4)} == {"kb"}
    assert [k.secret for k in pool.usable()] == ["kb"]
    assert pool.keys[0].errors == 1
    assert pool.keys[0].state == "disabled"


async def test_acquire_raises_no_usable_key_once_every_key_is_disabled() -> None:
    pool = KeyPool(["ka", "kb"], clock=FakeClock())
    for secret in ("ka", "kb"):
        pool.settle(await lease_on(pool, secret), INVALID)
    with pytest.raises(NoUsableKey):
        await pool.acquire()
    assert issubclass(NoUsableKey, ConfigError)


async def test_usage_since_last_reports_what_changed_since_the_previous_call() -> None:
    clock = FakeClock()
    pool = KeyPool(["ka", "kb"], clock=clock)
    ka, kb = pool.keys
    first = await pool.acquire(Cost(tokens=100))  # ka
    second = await pool.acquire(Cost(tokens=40))  # kb
    third = await pool.acquire(Cost(tokens=10))  # ka
    assert (first.key, second.key, third.key) == (ka, kb, ka)
    pool.settle(first, Feedback(Verdict.OK, None, tokens_used=130))  # the answer's usage
    pool.settle(second, rate_limited(clock.time() + 1))
    pool.settle(third, INVALID)
    for lease in (first, second, third):
        pool.release(lease)

    assert pool.usage_since_last() == [(ka, 2, 140, 0, 1), (kb, 1, 40, 1, 0)]
    clock.advance(1)
    assert (await pool.acquire()).key is kb  # ka is disabled now
    assert pool.usage_since_last() == [(ka, 0, 0, 0, 0), (kb, 1, 0, 0, 0)]
    assert pool.usage_since_last() == [(ka, 0, 0, 0, 0), (kb, 0, 0, 0, 0)]


async def test_a_lease_carries_its_key_cost_and_send_time() -> None:
    clock = FakeClock()
    pool = KeyPool(["ka"], clock=clock)
    lease = await pool.acquire(Cost(requests=2, tokens=300))
    assert lease.key is pool.keys[0]
    assert lease.cost == Cost(requests=2, tokens=300)
    assert lease.sent_at == clock.time()
    assert (lease.key.requests, lease.key.tokens) == (2, 300)
    assert (await pool.acquire()).cost == Cost()  # one request, no tokens by default


# -- limits ------------------------------------------------------------------------------


def test_shorthands_and_general_limits_add_up() -> None:
    pool = KeyPool(["ka"], rpm=500, tpm=200_000, rpd=1500, concurrency=8, limits=["60/3s"])
    assert [limit.describe() for limit in pool.limits] == [
        "60/3s",
        "500/minute",
        "200000 tokens/minute",
        "1500/day",
        "8 concurrent",
    ]
    # A pool without limits set still bounds the run: its limits are learned.
    assert pool.limited
    assert KeyPool(["ka"]).limited


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"limits": ["15 per fortnight"]}, "15 per fortnight"),
        ({"day_resets": "Mars/Olympus"}, "Mars/Olympus"),
        ({"rpm": 0}, "at least 1"),
    ],
)
def test_a_bad_limit_option_is_a_config_error(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        KeyPool(["ka"], **options)


def test_repeated_keys_are_kept_once() -> None:
    assert secrets(KeyPool(["ka", "kb", "ka"])) == ["ka", "kb"]


# -- where the meters live -----------------------------------------------------------------


def test_no_usable_key_is_one_error_wherever_it_is_imported_from() -> None:
    import paceline
    from paceline.errors import NoUsableKey as FromErrors

    assert NoUsableKey is FromErrors is paceline.NoUsableKey


@pytest.mark.parametrize("url", [None, "", "local", " local "])
def test_local_meters_are_the_default(url: str | None) -> None:
    from paceline.meters import LocalBackend, open_meter_backend

    backend = open_meter_backend(url)
    assert isinstance(backend, LocalBackend)
    assert not backend.shared


def test_an_unknown_meter_backend_is_one_line_without_its_password() -> None:
    from paceline.meters import open_meter_backend

    with pytest.raises(ConfigError) as info:
        open_meter_backend("memcached://user:hunter2@cache:11211")
    message = str(info.value)
    assert "hunter2" not in message
    assert "redis://" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis://127.0.0.1:6379/0?prefix=p&foo=bar", "foo"),
        ("redis://127.0.0.1:6379/abc", "must be a number"),
    ],
)
def test_a_limiter_url_with_a_mistake_is_refused_before_the_run(url: str, said: str) -> None:
    from paceline.meters import open_meter_backend

    with pytest.raises(ConfigError, match=said):
        open_meter_backend(url)


def test_the_redis_meters_need_the_redis_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from paceline.meters import open_meter_backend

    monkeypatch.setitem(sys.modules, "redis", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "paceline.meters.redis", raising=False)
    with pytest.raises(ConfigError) as info:
        open_meter_backend("redis://127.0.0.1:6379/0")
    assert str(info.value) == (
        "the Redis limiter needs the redis extra: pip install 'paceline[redis]'"
    )


def test_the_limiter_and_the_meters_do_not_import_keys() -> None:
    """keys imports the limiter, never the other way round (no import cycle)."""
    import ast
    from pathlib import Path

    import paceline

    root = Path(paceline.__file__).parent
    for path in [root / "limiter.py", *sorted((root / "meters").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(name.split(".")[-1] == "keys" for name in names), (path, names)


# -- states shown --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "until",
    [math.inf, -math.inf, math.nan, 253_402_300_800.0, 1e300, 9.9e15, None],
)
def test_a_state_until_no_time_shown_is_for_this_run_and_never_raises(
    until: float | None,
) -> None:
    assert describe_state("parked", until, 1_700_000_000.0) == "parked for this run"
    assert shown_until(until) is None


async def test_key_rows_show_until_as_a_finite_time_or_none() -> None:
    clock = FakeClock()
    pool = KeyPool(["ka-0123456789abcdef", "kb-0123456789abcdef"], clock=clock)
    pool.settle(await pool.acquire(), Feedback(Verdict.QUOTA_EXHAUSTED, None))
    pool.settle(await pool.acquire(), rate_limited(clock.time() + 30))
    parked, cooling = pool.describe(clock.time())
    assert (parked["state"], parked["until"]) == ("parked for this run", None)
    assert cooling["until"] == clock.time() + 30


def test_a_pool_without_keys_added_to_one_with_keys_has_keys() -> None:
    empty = KeyPool.from_env("NONE_KEY", env_file=None, environ={})
    merged = empty + KeyPool(["ka-0123456789abcdef"])
    merged.require_keys()
    assert [k.masked for k in merged.keys] == ["…cdef"]
    with pytest.raises(ConfigError, match="NONE_KEY_1"):
        (empty + KeyPool.from_env("OTHER_KEY", env_file=None, environ={})).require_keys()
