"""The dashboard served for real: uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.web.jobs import kill_runs

from paceline.web.api import Dashboard
from paceline.web.app import Server, create_app
from paceline.web.jobs import Jobs


@dataclass
class Served:
    """A running dashboard: its URL, a client, and its insides (for white-box checks)."""

    url: str
    client: httpx.Client
    server: Server

    @property
    def dashboard(self) -> Dashboard:
        return self.server.app.dashboard

    def stop(self) -> None:
        self.client.close()
        self.server.__exit__(None, None, None)


ServeFactory = Callable[..., Served]


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """``serve(*paths, token=..., max_upload_mb=..., notify=...)`` starts a dashboard."""
    started: list[Served] = []

    def start(*paths: Path, token: str | None = None, **options: Any) -> Served:
        warnings: list[str] = []
        app = create_app(Jobs.load(list(paths), warnings.append), token=token, **options)
        server = Server(app, "127.0.0.1", 0).__enter__()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=server.url, timeout=30, headers=headers)
        served = Served(server.url, client, server)
        started.append(served)
        return served

    yield start
    for served in started:
        for entry in served.dashboard.jobs:
            kill_runs(served.client, entry.name)
        served.stop()
