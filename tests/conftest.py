"""Shared test helpers: the simulated provider, and the CLI run as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from paceline.sim import KeyLimits, SimConfig, SimServer, parse_latency

SimFactory = Callable[..., SimServer]


@pytest.fixture
def sim_server() -> Iterator[SimFactory]:
    """Start simulated providers on free loopback ports; all are stopped after the test."""
    servers: list[SimServer] = []

    def start(
        *,
        latency: str = "fixed:0.005",
        limits: KeyLimits | None = None,
        keys: dict[str, KeyLimits] | None = None,
        **options: Any,
    ) -> SimServer:
        config = SimConfig(
            keys=keys,
            default_limits=limits or KeyLimits(),
            latency=parse_latency(latency),
            **options,
        )
        server = SimServer(config)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def paceline_cmd(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "paceline", *map(str, args)]


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``paceline ARGS`` to its end, without a terminal and without standard input."""
    return subprocess.run(
        paceline_cmd(*args),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


PG_ADMIN_DSN = os.environ.get("PACELINE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped after it."""
    import uuid

    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("PACELINE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"PostgreSQL is required but not reachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"paceline_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


REDIS_URL = os.environ.get("PACELINE_REDIS_URL", "redis://127.0.0.1:6379/0")


class RedisTarget:
    """A Redis to test against, and a key prefix no other test uses."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix

    def __repr__(self) -> str:
        return f"RedisTarget({self.url!r}, {self.prefix!r})"


@pytest.fixture
def redis_url() -> Iterator[RedisTarget]:
    """``PACELINE_REDIS_URL`` (or the local Redis) and a fresh prefix, whose keys are
    deleted after the test. Skips when Redis is unreachable, unless
    ``PACELINE_REQUIRE_SERVICES=1``: then it fails."""
    import uuid

    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        client.close()
        if os.environ.get("PACELINE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Redis is required but not reachable: {exc}")
        pytest.skip(f"Redis not reachable: {exc}")
    prefix = f"paceline-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield RedisTarget(REDIS_URL, prefix)
    finally:
        for name in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(name)
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own, without persistence: a restart loses everything."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("PACELINE_REQUIRE_SERVICES") == "1":
                pytest.fail("redis-server is required but not installed")
            pytest.skip("redis-server not installed")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()
