"""The simulated provider as an ASGI app: four providers' wire formats behind one server.

Every request goes through the same steps: read the key where its provider expects it,
refuse a missing, unknown or revoked key the provider's way, parse the call, ask the key's
meters (a refused request spends nothing), then, holding an in-flight slot, maybe inject a
fault or a hang, wait the sampled latency and answer. Waiting uses the injected clock, so a
test with a :class:`~paceline.clock.FakeClock` and ``httpx.ASGITransport`` never sleeps.

Routes (see each style module for the wire details):

=====================================================  ==========================
``POST /v1/chat/completions``                          OpenAI
``POST /v1/messages``                                  Anthropic
``POST /v1beta/models/{model}:generateContent``        Gemini
``GET /repos/{owner}/{repo}[/commits|/languages]``     GitHub
``GET /rate_limit``                                    GitHub (does not count)
``GET /_sim/stats``, ``POST /_sim/reset``              for tests and benchmarks
``POST /_sim/outage?seconds=S``                        go down for S seconds
=====================================================  ==========================

An outage needs the app served by :class:`~paceline.sim.SimServer` (it closes the listening
socket): the server sets ``app.state.outage``; a bare app answers 501.

>>> import httpx
>>> from paceline.clock import FakeClock
>>> from paceline.sim import KeyLimits
>>> app = create_app(SimConfig(keys={"k1": KeyLimits(rpm=3)}), clock=FakeClock())
>>> client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sim")
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from paceline.clock import SYSTEM_CLOCK, Clock
from paceline.sim._anthropic import AnthropicStyle
from paceline.sim._gemini import GeminiStyle
from paceline.sim._github import GitHubStyle, rate_limit_body
from paceline.sim._openai import OpenAIStyle
from paceline.sim._wire import Call, Style, json_response, mask_key
from paceline.sim.config import SimConfig
from paceline.sim.limits import KeyMeter

__all__ = ["create_app"]

_CUT = "paceline-sim: cut by an outage"


@dataclass(slots=True)
class _Counts:
    """What ``/_sim/stats`` reports for one key (and for all keys together)."""

    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    errors: int = 0
    tokens: int = 0


class _Simulator:
    """The app's state: config, clock, one meter per key, counters and the random source."""

    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.tz = ZoneInfo(config.day_resets_tz)
        # Requests waiting out their latency or hang, which an outage cuts short.
        self.answering: set[asyncio.Task[object]] = set()
        self.reset()

    def reset(self) -> None:
        """Forget all usage: meters, counters, and the random sequence (back to the seed)."""
        self.meters: dict[str, KeyMeter] = {}
        self.counts: dict[str, _Counts] = {}
        self.total = _Counts()
        self.rng = random.Random(self.config.seed)

    def cut(self) -> None:
        """End every answer under way unsent (their connections are cut by an outage)."""
        for task in list(self.answering):
            task.cancel(_CUT)

    def meter(self, key: str) -> KeyMeter:
        meter = self.meters.get(key)
        if meter is None:
            limits = self.config.limits_for(key)
            meter = self.meters[key] = KeyMeter(
                limits, self.clock, self.tz, token_bucket=self.config.token_bucket
            )
        return meter

    def counts_for(self, key: str) -> _Counts:
        # Keyed by the masked form: the stats endpoint must never show a whole key.
        masked = mask_key(key)
        counts = self.counts.get(masked)
        if counts is None:
            counts = self.counts[masked] = _Counts()
        return counts

    async def handle(self, request: Request, style: Style) -> Response:
        """One request through authentication, meters, faults and latency."""
        total = self.total
        total.requests += 1
        key = style.read_key(request)
        if key is None:
            total.errors += 1
            return style.missing_key()
        counts = self.counts_for(key)
        counts.requests += 1
        if not self.config.accepts(key):
            counts.errors += 1
            total.errors += 1
            return style.invalid_key(key)
        call = await style.parse(request, self.clock.time())
        if isinstance(call, Response):
            counts.errors += 1
            total.errors += 1
            return call
        meter = self.meter(key)
        rejection = meter.try_acquire(call.tokens)
        if rejection is not None:
            counts.rate_limited += 1
            total.rate_limited += 1
            state = meter.state()
            return style.rate_limited(rejection, call, state, style.headers(state))
        answered = False
        try:
            # Headers describe the meters as the request was admitted, as providers do.
            headers = style.headers(meter.state())
            response = await self._answer(style, call, headers, counts)
            answered = response.status_code < 400
            return response
        finally:
            meter.release(call.unused if answered else 0)

    async def _answer(
        self, style: Style, call: Call, headers: dict[str, str], counts: _Counts
    ) -> Response:
        config, rng, total = self.config, self.rng, self.total
        failed = config.error_rate > 0 and rng.random() < config.error_rate
        waiting = asyncio.current_task()
        if waiting is not None:
            self.answering.add(waiting)
        try:
            if config.hang_rate > 0 and rng.random() < config.hang_rate:
                await self.clock.sleep(config.hang_seconds)
            delay = config.latency.sample(rng)
            if delay > 0:
                await self.clock.sleep(delay)
        except asyncio.CancelledError as exc:
            if waiting is None or exc.args != (_CUT,):
                raise  # a stop, not an outage
            waiting.uncancel()
            # The connection is gone: nobody reads this answer. Counted as an error, so
            # requests = ok + rate_limited + errors still holds.
            counts.errors += 1
            total.errors += 1
            return style.fault(503, headers)
        finally:
            if waiting is not None:
                self.answering.discard(waiting)
        if failed:
            counts.errors += 1
            total.errors += 1
            return style.fault(rng.choice(style.fault_statuses), headers)
        if call.status >= 400:
            counts.errors += 1
            total.errors += 1
        else:
            counts.ok += 1
            total.ok += 1
            counts.tokens += call.usage
            total.tokens += call.usage
        if call.headers:
            headers = {**headers, **call.headers}
        return json_response(call.body, call.status, headers)

    async def github_rate_limit(self, request: Request, style: GitHubStyle) -> Response:
        """``GET /rate_limit``: the token's hourly window, without spending any of it."""
        key = style.read_key(request)
        if key is None:
            return style.missing_key()
        if not self.config.accepts(key):
            return style.invalid_key(key)
        state = self.meter(key).state()
        return json_response(rate_limit_body(state.rph), headers=style.headers(state))

    def stats(self) -> dict[str, object]:
        """Counters per masked key and in total."""
        keys = {masked: asdict(counts) for masked, counts in self.counts.items()}
        return {"keys": keys, "total": asdict(self.total)}


def create_app(config: SimConfig | None = None, clock: Clock = SYSTEM_CLOCK) -> Starlette:
    """Build the simulated provider's ASGI app.

    ``clock`` drives the meters and every wait (latency, hangs); pass a
    :class:`~paceline.clock.FakeClock` to test time-dependent behaviour without sleeping.
    The app works with any ASGI server or with ``httpx.ASGITransport`` directly.

    A refused request spends nothing; an admitted one spends its quota even when a fault is
    injected, since the provider did receive it. ``GET /_sim/stats`` counts per masked key
    (``…`` and the last four characters): ``requests`` = ``ok`` + ``rate_limited`` +
    ``errors`` (bad keys, malformed requests, injected faults, GitHub 404s), and ``tokens``,
    the usage reported by successful answers. ``POST /_sim/reset`` forgets all of it, meters
    included, and restarts the random sequence from the seed. ``POST /_sim/outage?seconds=S``
    (served by :class:`~paceline.sim.SimServer` only) answers 202, then the server refuses
    connections for S seconds, cutting the requests in flight (counted as errors), and
    serves again on the same port.
    """
    config = config or SimConfig()
    sim = _Simulator(config, clock)
    github = GitHubStyle(config.github_limit_status)

    def endpoint(style: Style) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await sim.handle(request, style)

        return handle

    async def rate_limit(request: Request) -> Response:
        return await sim.github_rate_limit(request, github)

    async def stats(request: Request) -> Response:
        return json_response(sim.stats())

    async def reset(request: Request) -> Response:
        sim.reset()
        return json_response({"reset": True})

    async def outage(request: Request) -> Response:
        go_down: Callable[[float], None] | None = getattr(request.app.state, "outage", None)
        if go_down is None:
            return json_response(
                {"error": "an outage needs the simulator served by SimServer"}, 501
            )
        try:
            seconds = float(request.query_params.get("seconds", ""))
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and 0 <= seconds <= 3600):
            return json_response({"error": "seconds must be a number from 0 to 3600"}, 422)

        async def begin() -> None:
            go_down(seconds)

        response = json_response({"outage": seconds}, 202)
        # After the answer is written: the outage cuts this connection too.
        response.background = BackgroundTask(begin)
        return response

    gh = endpoint(github)
    routes = [
        Route(
            "/v1/chat/completions",
            endpoint(OpenAIStyle(config.openai_organization)),
            methods=["POST"],
        ),
        Route("/v1/messages", endpoint(AnthropicStyle()), methods=["POST"]),
        Route("/v1beta/models/{model}:generateContent", endpoint(GeminiStyle()), methods=["POST"]),
        Route("/repos/{owner}/{repo}", gh, methods=["GET"]),
        Route("/repos/{owner}/{repo}/{resource}", gh, methods=["GET"]),
        Route("/rate_limit", rate_limit, methods=["GET"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/outage", outage, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.config = config
    app.state.outage = None  # set by SimServer, which owns the listening socket
    app.state.cut = sim.cut  # for SimServer: what an outage does to answers under way
    return app
