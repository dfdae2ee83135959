"""The application and the server of ``paceline serve``.

>>> app = create_app(Jobs.load([Path("jobs")], print))       # doctest: +SKIP
>>> with Server(app, "127.0.0.1", 0) as server:               # doctest: +SKIP
...     server.url
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from paceline import __version__
from paceline.errors import ConfigError

from . import metrics
from .api import ApiError, Dashboard, error_status, router
from .auth import Gate, Guard, is_loopback
from .events import Hub
from .jobs import Jobs
from .pages import pages
from .runs import Launcher

__all__ = ["App", "Server", "create_app", "serve"]

log = logging.getLogger("paceline.web")

DEFAULT_PORT = 8765
_START_TIMEOUT = 10.0


class App(Gate):
    """The application behind its checks, with what it serves at hand."""

    def __init__(self, app: FastAPI, dashboard: Dashboard, *, loopback_only: bool) -> None:
        super().__init__(app, dashboard.guard, loopback_only=loopback_only)
        self.dashboard = dashboard


def create_app(
    jobs: Jobs,
    *,
    token: str | None = None,
    max_upload_mb: float = 100,
    notify: str | None = None,
    loopback_only: bool = True,
    poll_interval: float = 1.0,
) -> App:
    """The dashboard and API for ``jobs`` (wrapped in the token and host checks)."""
    hub = Hub(poll_interval)
    launcher = Launcher(notify=notify)
    dash = Dashboard(jobs, launcher, hub, Guard(token), int(max_upload_mb * (1 << 20)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap(launcher))
        try:
            yield
        finally:
            hub.close()
            reaper.cancel()
            launcher.close()

    app = FastAPI(
        title="paceline",
        version=__version__,
        summary="Watch, start and steer paceline jobs.",
        description="The dashboard's API: the same numbers as `paceline status --json`, and "
        "the same actions as `paceline run / stop / retry / expedite`. With a token, send "
        "`Authorization: Bearer TOKEN`; event streams take `?ticket=` from "
        "`POST /api/tickets`.",
        lifespan=lifespan,
        # The interactive docs load their scripts from a CDN, which the pages' content
        # policy (and an offline machine) refuses: /openapi.json is the description.
        docs_url=None,
        redoc_url=None,
    )
    app.state.dashboard = dash
    app.include_router(router)
    app.include_router(pages)

    @app.get("/metrics", include_in_schema=True, summary="Prometheus metrics, by job")
    async def get_metrics() -> Response:
        body = await asyncio.to_thread(metrics.render, dash.all_statuses)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        status, message = error_status(exc)
        if status >= 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": message, "status": status}, status_code=status)

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        ]
        message = "; ".join(problems) or "invalid request"
        return JSONResponse({"error": message, "status": 422}, status_code=422)

    app.add_exception_handler(ApiError, on_error)
    app.add_exception_handler(ConfigError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(Exception, on_error)
    return App(app, dash, loopback_only=loopback_only)


async def _reap(launcher: Launcher) -> None:
    while True:
        await asyncio.sleep(1.0)
        launcher.reap()


class _Uvicorn(uvicorn.Server):
    """uvicorn, telling the app's event streams to end before it waits for connections."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


class Server:
    """The app listening on ``host:port`` (``port=0`` picks a free one), in the foreground
    (:meth:`run`) or on a background thread (``with Server(...)``, for tests)."""

    def __init__(self, app: App, host: str, port: int) -> None:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # gaierror: no such host or address
            raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
        family, kind, _, _, address = found[0]
        self._socket = socket.socket(family, kind, socket.IPPROTO_TCP)
        if sys.platform != "win32":
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind(address)
        except OSError as exc:
            self._socket.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        # Listening now: connections wait in the backlog until uvicorn takes them, so the
        # URL printed before it starts is good at once.
        self._socket.listen(2048)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self.app = app
        hub = app.dashboard.hub
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _Uvicorn(config, hub.close)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve until Ctrl+C or SIGTERM."""
        with contextlib.suppress(KeyboardInterrupt):
            self._server.run(sockets=[self._socket])

    def __enter__(self) -> Server:
        self._thread = threading.Thread(target=self.run, name="paceline-serve", daemon=True)
        self._thread.start()
        for _ in range(int(_START_TIMEOUT / 0.02)):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.02)
        if not self._server.started:
            raise RuntimeError("paceline serve did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.app.dashboard.hub.close()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_START_TIMEOUT)


def serve(
    paths: list[Path],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str | None = None,
    max_upload_mb: float = 100,
    notify: str | None = None,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> None:
    """``paceline serve``: load the jobs, check the token rule, serve until Ctrl+C."""
    if token is not None and (not token.strip() or token != token.strip()):
        raise ConfigError("the token is blank or has spaces around it: no request could send it")
    loopback = is_loopback(host)
    if not loopback and not token:
        raise ConfigError(
            f"serving on {host} (not a loopback address) needs a token: --token or PACELINE_TOKEN"
        )
    jobs = Jobs.load(paths, warn)
    app = create_app(
        jobs,
        token=token,
        max_upload_mb=max_upload_mb,
        notify=notify,
        loopback_only=loopback,
    )
    server = Server(app, host, port)
    names = ", ".join(e.name for e in jobs)
    notes = [] if loopback else [f"listening on {host}"]
    notes += ["token required"] if token else []
    more = f" ({'; '.join(notes)})" if notes else ""
    echo(f"paceline serve: {server.url}{more} · {len(jobs)} job(s): {names} · Ctrl+C to stop")
    with _quiet_logs():
        server.run()


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Errors of the app on stderr (a traceback for a 500); no access log."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("paceline serve: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.removeHandler(handler)
