"""Serving the simulated provider on a real socket: in a running loop, in a thread, or blocking.

The listening socket is bound here, before uvicorn starts, so ``port=0`` gets a free port with
no window for another process to take it, and :attr:`SimServer.url` is known at once.

>>> import httpx
>>> with SimServer(SimConfig()) as sim:  # a background thread with its own loop
...     httpx.get(f"{sim.url}/_sim/stats").status_code
200

Inside a running loop, ``async with SimServer(config) as sim:`` serves as a task on that loop.

:meth:`SimServer.outage` (or ``POST /_sim/outage?seconds=S``) takes the server down for a
while, as a provider's outage does: the listening socket closes (a client gets "connection
refused"), the connections open are cut, and after the outage a new socket listens on the
same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

import uvicorn

from paceline.clock import SYSTEM_CLOCK, Clock
from paceline.sim.app import create_app
from paceline.sim.config import SimConfig

__all__ = ["SimServer", "serve"]

# How long a stop waits for answers still in flight (hung requests, long latencies) before
# cancelling them; short, because whoever stops a simulator no longer wants those answers.
_GRACE_SECONDS = 1
_START_TIMEOUT = 10.0
# How often a server coming back from an outage tries its port again if it is busy.
_REBIND_EVERY = 0.1


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, non-blocking; ``OSError`` with a readable
    message when the address is taken."""
    family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that do,
    # and with Nagle on, every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, kind, socket.IPPROTO_TCP)
    if sys.platform != "win32":
        # Lets a fixed port be reused right after a restart (or an outage); on Windows the
        # same option would let two servers share a port, so it stays off there.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by an event instead of its 0.1 s poll, leaving signals alone."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_started = on_started
        # asyncio.Event binds to a loop on first use, so these serve either mode.
        self.started_event = asyncio.Event()
        self.stop_event = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The program embedding the simulator (a test, the demo, the CLI) owns SIGINT.
        yield

    async def main_loop(self) -> None:
        await self.on_tick(0)
        self.started_event.set()
        self.on_started()
        await self.stop_event.wait()


class SimServer:
    """The simulated provider listening on ``host:port`` (``port=0`` picks a free one).

    Use ``async with`` inside a running event loop, or ``start()``/``stop()`` (or a plain
    ``with``) to serve from a background thread with its own loop, e.g. when the code under
    test is synchronous or runs in a subprocess. The port is bound on creation, so
    :attr:`url` is known at once; a server starts once, and ``stop()`` releases the port
    even if it never started.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config or SimConfig()
        self.clock = clock
        self.app = create_app(self.config, clock)
        self.app.state.outage = self.outage
        self._socket = _bind(host, port)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        uv_config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=_GRACE_SECONDS,
        )
        self._ready = threading.Event()
        self._server = _Server(uv_config, self._ready.set)
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_error: BaseException | None = None
        self._outage: asyncio.Task[None] | None = None
        self._back_at = 0.0  # monotonic time the outage under way ends
        #: Outages begun so far (one that extends another counts once).
        self.outages = 0

    @property
    def url(self) -> str:
        """Base URL, such as ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _claim(self) -> None:
        if self._task is not None or self._thread is not None:
            raise RuntimeError("a SimServer starts only once; create a new one")

    async def __aenter__(self) -> SimServer:
        """Serve as a task on the running loop; returns once connections are accepted."""
        self._claim()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        ready = asyncio.create_task(self._server.started_event.wait())
        await asyncio.wait(
            {self._task, ready}, timeout=_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        ready.cancel()
        if not self._server.started_event.is_set():
            await self._stop_task()
            raise RuntimeError("the simulated provider did not start")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_task()

    async def _stop_task(self) -> None:
        self._server.stop_event.set()
        if self._outage is not None:
            self._outage.cancel()
        if self._task is not None:
            await self._task

    # -- outages -------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        """Whether an outage is under way."""
        return self._outage is not None and not self._outage.done()

    def outage(self, seconds: float) -> None:
        """Go down for ``seconds``, as a provider's outage does; returns at once.

        The listening socket closes, so new connections are refused; the connections open
        are cut, and the requests they carry end unanswered (counted as errors). After
        ``seconds`` the server listens on the same port again. An outage called during
        another one extends it. Callable from any thread while the server serves.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"an outage lasts 0 seconds or more, not {seconds!r}")
        loop = self._loop
        if loop is None or loop.is_closed() or not self._server.started:
            raise RuntimeError("the simulated provider is not serving")
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            self._begin_outage(seconds)
        else:
            loop.call_soon_threadsafe(self._begin_outage, seconds)

    def _begin_outage(self, seconds: float) -> None:
        if self._server.stop_event.is_set():
            return
        self._back_at = max(self._back_at, self.clock.monotonic() + seconds)
        if not self.down:
            self.outages += 1
            self._outage = asyncio.get_running_loop().create_task(self._go_down())

    async def _go_down(self) -> None:
        server = self._server
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        self.app.state.cut()
        while (left := self._back_at - self.clock.monotonic()) > 0:
            await self.clock.sleep(left)
        while not server.stop_event.is_set():
            try:
                sock = _bind(self.host, self.port)
            except OSError:  # someone took the port meanwhile: wait for it
                await self.clock.sleep(_REBIND_EVERY)
                continue
            loop = asyncio.get_running_loop()
            listener = await loop.create_server(
                self._new_connection, sock=sock, backlog=server.config.backlog
            )
            server.servers = [listener]  # what uvicorn's shutdown closes
            return

    def _new_connection(self) -> asyncio.Protocol:
        # What uvicorn's startup hands to create_server: a protocol sharing the server's
        # state, so a stop still waits for (and then cancels) these connections.
        server = self._server
        # uvicorn types the class as a bare asyncio.Protocol; its own startup ignores it too.
        protocol: asyncio.Protocol = server.config.http_protocol_class(  # type: ignore[call-arg]
            config=server.config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
        )
        return protocol

    def start(self) -> str:
        """Serve from a background thread with its own event loop; returns :attr:`url`."""
        self._claim()
        self._thread = threading.Thread(target=self._run_thread, name="paceline-sim", daemon=True)
        self._thread.start()
        self._ready.wait(_START_TIMEOUT)
        if not self._server.started or self._thread_error is not None:
            self.stop()
            raise RuntimeError("the simulated provider did not start") from self._thread_error
        return self.url

    def _run_thread(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            await self._server.serve(sockets=[self._socket])

        try:
            asyncio.run(run())
        except BaseException as error:  # reported to start(), which re-raises it
            self._thread_error = error
        finally:
            self._ready.set()  # a failed start must not leave start() waiting

    def stop(self) -> None:
        """Stop the background thread started by :meth:`start` and wait for it."""
        if self._thread is None:
            if self._task is None:
                self._socket.close()  # never served: uvicorn would have closed it on shutdown
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to stop
                self._loop.call_soon_threadsafe(self._server.stop_event.set)
        self._thread.join(_START_TIMEOUT)

    def __enter__(self) -> SimServer:
        """``with SimServer(...) as sim:`` is :meth:`start` ... :meth:`stop`."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until Ctrl+C (or SIGTERM), then return normally; for ``paceline sim``.

    ``on_ready`` receives the URL once connections are accepted (useful with ``port=0``).
    Raises ``OSError`` with a readable message if the address cannot be bound.
    """
    server = SimServer(config, host, port)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        async with server:
            stop = server._server.stop_event
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl+C raises instead
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
            if on_ready is not None:
                on_ready(server.url)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
