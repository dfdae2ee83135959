"""The JSON API: ``/api/...`` over the functions the CLI uses (``job_status``, ``ops``).

Reading (jobs, status, failures, events) opens stores read-only and needs no key;
starting runs ``paceline run`` as a detached process; stop, retry and expedite write
their request into the store, as ``paceline stop`` / ``retry`` / ``expedite`` do.
Errors are ``{"error": message, "status": code}``: 404 unknown job, 409 already running
(or not running), 413 upload too large, 422 bad input.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from paceline import ops
from paceline.errors import ConfigError, JobAlreadyRunning, PacelineError
from paceline.status import job_status
from paceline.store import is_invalid_id

from .auth import Guard
from .events import Hub
from .forms import read_start_form
from .jobs import JobEntry, Jobs
from .runs import Launcher

__all__ = ["ApiError", "Dashboard", "router"]


class ApiError(Exception):
    """An answer other than 2xx, with its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Dashboard:
    """What the app serves: the jobs, the runs it starts, the live feeds, the token."""

    jobs: Jobs
    launcher: Launcher
    hub: Hub
    guard: Guard
    max_upload: int
    starting: dict[str, asyncio.Lock] = field(default_factory=dict)

    def entry(self, name: str) -> JobEntry:
        entry = self.jobs.get(name)
        if entry is None:
            raise ApiError(404, f"no job named {name!r} is served here")
        return entry

    def status(self, entry: JobEntry) -> dict[str, Any]:
        """``status --json`` of the job, plus what the page needs to act on it."""
        try:
            data = job_status(entry.job)
        except PacelineError as exc:
            data = {"job": entry.name, "state": "error", "error": str(exc)}
        upload = entry.upload
        log = self.launcher.latest_log(entry)
        data.update(
            jobfile=str(entry.file),
            upload=upload.info() if upload is not None else None,
            run_log=str(log) if log is not None else None,
        )
        return data

    def all_statuses(self) -> list[dict[str, Any]]:
        return [self.status(e) for e in self.jobs]


# -- documented shapes (answers are sent as built; these describe them) -----------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class KeyStatus(_Open):
    key: str = Field(description="The key, masked: … and its last four characters.")
    requests: int
    tokens: int
    rate_limited: int = Field(description="429 answers.")
    errors: int
    state: str = Field(description="ready, cooling until …, parked until …, disabled")
    until: float | None
    reason: str | None
    limits: list[str]
    today: list[dict[str, Any]] = Field(description="Daily quotas: unit, used, limit.")


class RecentFailure(_Open):
    id: str
    attempts: int
    error: str


class UploadedFileInfo(_Open):
    file: str = Field(description="The file's name in the job's upload folder.")
    name: str = Field(description="The name it was uploaded with, sanitised.")
    sha256: str
    bytes: int
    lines: int
    uploaded_at: float


class UploadInfo(_Open):
    format: Literal["csv", "jsonl"]
    id: str | None
    files: list[UploadedFileInfo]


class JobStatus(_Open):
    """The fields of ``paceline status --json``, plus ``jobfile``, ``upload``, ``run_log``."""

    job: str
    store: str
    state: str = Field(description="not started, running, finished, stopped, interrupted, failed")
    total: int
    done: int
    failed: int
    pending: int = Field(description="Waiting, including those waiting for a retry.")
    running: int = Field(description="In flight now.")
    retrying: int
    skipped: int
    duplicates: int
    cost_usd: float
    source_done: bool
    keys: list[KeyStatus]
    run: dict[str, Any] | None = Field(
        description="The live or last run: pid, host, started_at, rate_now, rate_avg, "
        "rate_peak, eta_seconds, elapsed, ..."
    )
    workers: list[dict[str, Any]]
    stop_requested: bool
    recent_failures: list[RecentFailure]
    jobfile: str
    upload: UploadInfo | None = Field(description="Set when the job takes an upload.")
    run_log: str | None = Field(description="Log of the last run started from a page.")


class JobList(BaseModel):
    jobs: list[JobStatus]


class Started(BaseModel):
    job: str
    pid: int
    state: str = Field(description="running, or how the run already ended")
    log: str
    command: list[str]
    upload: dict[str, Any] | None = Field(
        description="The file received (with new=false when the same bytes came before)."
    )


class Stopped(BaseModel):
    job: str
    asked: int = Field(description="Workers asked to stop through the store.")
    signalled: bool = Field(description="A run not yet in its store got SIGTERM instead.")


class Ids(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=10_000)


class RetryRequest(BaseModel):
    ids: list[str] | None = Field(
        default=None,
        max_length=10_000,
        description="Only these failed items, first in line (also while a run goes on); "
        "without ids, every failed item with a fresh retry budget (not while running).",
    )
    invalid: bool = Field(
        default=False, description="Also forget failed source lines and read them again."
    )


class Retried(BaseModel):
    job: str
    put_back: int
    invalid_left: int | None = None
    not_failed: dict[str, str] = Field(default_factory=dict)
    unknown: list[str] = Field(default_factory=list)
    invalid: list[str] = Field(
        default_factory=list,
        description="Invalid source lines among the ids: nothing to run, so not put back "
        "(fix the lines, then retry with invalid=true to read them again).",
    )


class Expedited(BaseModel):
    job: str
    before: dict[str, str | None] = Field(
        description="Each id's status before (null: not in the store)."
    )
    invalid: list[str] = Field(
        default_factory=list,
        description="Invalid source lines among the ids: nothing to run, left as they are.",
    )


class FailedItemOut(BaseModel):
    id: str
    attempts: int
    error: str
    line: int | None
    updated_at: float | None
    invalid: bool = Field(description="A source line that was not a valid item.")


class FailureList(BaseModel):
    job: str
    total: int
    kinds: dict[str, int] = Field(description="How many failed with each kind of error.")
    items: list[FailedItemOut]


class TicketRequest(BaseModel):
    job: str | None = Field(default=None, description="The job's stream; none: the list's.")


class Ticket(BaseModel):
    ticket: str
    expires_in: float


class ErrorOut(BaseModel):
    error: str
    status: int


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


_START_FORM = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV or JSONL, for jobs whose source is "
                            "paceline.Upload (optional once a file was uploaded).",
                        },
                        "mode": {"type": "string", "enum": ["parallel", "sequential"]},
                        "concurrency": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "Items in flight (parallel mode; default: "
                            "automatic with keys).",
                        },
                    },
                }
            }
        }
    }
}


# -- routes -------------------------------------------------------------------------------

router = APIRouter(prefix="/api")


def _dash(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


@router.get("/jobs", response_model=JobList, summary="Every served job and its status")
async def list_jobs(request: Request) -> JSONResponse:
    dash = _dash(request)
    return JSONResponse({"jobs": await asyncio.to_thread(dash.all_statuses)})


@router.get(
    "/jobs/{name}",
    response_model=JobStatus,
    responses=_errors(404),
    summary="One job: the fields of `status --json`",
)
async def get_job(name: str, request: Request) -> JSONResponse:
    dash = _dash(request)
    entry = dash.entry(name)
    return JSONResponse(await asyncio.to_thread(dash.status, entry))


@router.post(
    "/jobs/{name}/start",
    status_code=202,
    response_model=Started,
    responses=_errors(404, 409, 413, 422),
    openapi_extra=_START_FORM,
    summary="Start a run (with an uploaded file for upload jobs)",
)
async def start_job(name: str, request: Request) -> JSONResponse:
    dash = _dash(request)
    entry = dash.entry(name)
    lock = dash.starting.setdefault(name, asyncio.Lock())
    if lock.locked():
        raise ApiError(409, f"job {name!r} is being started already")
    async with lock:
        status = await asyncio.to_thread(job_status, entry.job)
        if status["state"] == "running":
            raise ApiError(409, f"job {name!r} is already running: stop it first")
        form = await read_start_form(request, entry.upload, dash.max_upload)
        try:
            mode = form.fields.get("mode") or "parallel"
            if mode not in ("parallel", "sequential"):
                raise ApiError(422, f"mode must be parallel or sequential, not {mode!r}")
            concurrency = _concurrency(form.fields.get("concurrency"))
            if entry.upload is not None and form.receiver is None and not entry.upload.files():
                raise ApiError(422, f"job {name!r} takes its input as an upload: send a file")
            kept = await asyncio.to_thread(form.keep)
        except BaseException:
            form.discard()
            raise
        started = await asyncio.to_thread(
            dash.launcher.start,
            entry,
            sequential=mode == "sequential",
            concurrency=None if mode == "sequential" else concurrency,
        )
    dash.hub.poke(name)
    dash.hub.poke("*")
    upload = None if kept is None else {**kept[0].as_dict(), "new": kept[1]}
    return JSONResponse({"job": name, **started.as_dict(), "upload": upload}, status_code=202)


def _concurrency(text: str | None) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        raise ApiError(422, f"concurrency must be a whole number, not {text!r}") from None
    if not 1 <= value <= 100_000:
        raise ApiError(422, "concurrency must be between 1 and 100000")
    return value


@router.post(
    "/jobs/{name}/stop",
    response_model=Stopped,
    responses=_errors(404, 409),
    summary="Stop gracefully: every worker finishes what is in flight",
)
async def stop_job(name: str, request: Request) -> JSONResponse:
    dash = _dash(request)
    entry = dash.entry(name)
    result = await asyncio.to_thread(dash.launcher.stop, entry)
    if not result["asked"] and not result["signalled"]:
        raise ApiError(409, f"job {name!r} is not running")
    dash.hub.poke(name)
    return JSONResponse({"job": name, **result})


@router.post(
    "/jobs/{name}/retry",
    response_model=Retried,
    responses=_errors(404, 409, 422),
    summary="Put failed items back in line",
)
async def retry_job(
    name: str, request: Request, body: Annotated[RetryRequest | None, Body()] = None
) -> JSONResponse:
    dash = _dash(request)
    entry = dash.entry(name)
    body = body or RetryRequest()
    if body.ids is not None:
        known = await asyncio.to_thread(ops.statuses, entry.job, body.ids)
        failed = [i for i in body.ids if known.get(i) == "failed"]
        invalid = [i for i in failed if is_invalid_id(i)]
        failed = [i for i in failed if not is_invalid_id(i)]
        if failed:
            await asyncio.to_thread(ops.expedite, entry.job, failed)
        answer: dict[str, Any] = {
            "job": name,
            "put_back": len(failed),
            "not_failed": {i: s for i, s in known.items() if s != "failed"},
            "unknown": [i for i in body.ids if i not in known],
            "invalid": invalid,
        }
    else:
        result = await asyncio.to_thread(ops.retry, entry.job, invalid=body.invalid)
        answer = {"job": name, "put_back": result.put_back, "invalid_left": result.invalid_left}
    dash.hub.poke(name)
    return JSONResponse(answer)


@router.post(
    "/jobs/{name}/expedite",
    response_model=Expedited,
    responses=_errors(404, 409, 422),
    summary="Put items first in line (a running job takes them within a second)",
)
async def expedite_job(name: str, request: Request, body: Ids) -> JSONResponse:
    dash = _dash(request)
    entry = dash.entry(name)
    before = await asyncio.to_thread(ops.expedite, entry.job, body.ids)
    dash.hub.poke(name)
    invalid = [i for i in body.ids if i in before and is_invalid_id(i)]
    return JSONResponse(
        {"job": name, "before": {i: before.get(i) for i in body.ids}, "invalid": invalid}
    )


@router.get(
    "/jobs/{name}/failures",
    response_model=FailureList,
    responses=_errors(404),
    summary="Items failed for good, most recent first, and their kinds of error",
)
async def list_failures(
    name: str, request: Request, limit: Annotated[int, Query(ge=0, le=10_000)] = 100
) -> JSONResponse:
    dash = _dash(request)
    entry = dash.entry(name)
    report = await asyncio.to_thread(ops.failures, entry.job, limit=limit)
    items = [
        {
            "id": f.id,
            "attempts": f.attempts,
            "error": f.error,
            "line": f.line,
            "updated_at": f.updated_at,
            "invalid": f.invalid,
        }
        for f in report.items
    ]
    return JSONResponse(
        {"job": name, "total": report.total, "kinds": dict(report.kinds), "items": items}
    )


@router.post(
    "/tickets",
    response_model=Ticket,
    responses=_errors(401, 404),
    summary="A ticket for an event stream (EventSource cannot send the token)",
)
async def ticket(request: Request, body: Annotated[TicketRequest | None, Body()] = None) -> Ticket:
    dash = _dash(request)
    scope = "*"
    if body is not None and body.job is not None:
        scope = dash.entry(body.job).name
    return Ticket(ticket=dash.guard.ticket(scope), expires_in=dash.guard.ticket_seconds)


_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: `status` events whose data is the job's status "
        "(as `GET /api/jobs/{name}`), sent when it changes (read about once a second).",
        "content": {"text/event-stream": {}},
    }
}


@router.get(
    "/jobs/{name}/events",
    responses={**_SSE_DOC, **_errors(401, 404)},
    summary="Live status of one job (server-sent events)",
)
async def job_events(
    name: str, request: Request, ticket: Annotated[str | None, Query()] = None
) -> EventSourceResponse:
    dash = _dash(request)
    entry = dash.entry(name)
    return _stream(dash, name, lambda: dash.status(entry))


@router.get(
    "/events",
    responses={**_SSE_DOC, **_errors(401)},
    summary="Live statuses of every job (server-sent events; data as GET /api/jobs)",
)
async def all_events(
    request: Request, ticket: Annotated[str | None, Query()] = None
) -> EventSourceResponse:
    dash = _dash(request)
    return _stream(dash, "*", lambda: {"jobs": dash.all_statuses()})


def _stream(dash: Dashboard, key: str, read: Any) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, str]]:
        async for payload in dash.hub.watch(key, read):
            yield {"event": "status", "data": payload}

    return EventSourceResponse(
        events(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


def error_status(exc: Exception) -> tuple[int, str]:
    """The status code and message of an error raised while answering."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and isinstance(exc, ConfigError):
        return status, str(exc)  # an upload refused: 413 or 422
    if isinstance(exc, JobAlreadyRunning):
        return 409, str(exc)
    if isinstance(exc, ConfigError):
        message = str(exc)
        return (409 if "has not run yet" in message else 422), message
    if isinstance(exc, PacelineError):
        return 500, str(exc)
    return 500, f"internal error ({type(exc).__name__}); the server's log has the details"
