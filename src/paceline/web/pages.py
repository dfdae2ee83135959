"""The pages: a jobs list and one page per job, plain HTML with one script and one style
sheet (no build step, no framework). They hold no data: the script reads the API and
follows the job's event stream, so a page needs no token to load (its API calls do).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

__all__ = ["pages"]

pages = APIRouter(include_in_schema=False)

_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _page(name: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_read(name), status_code=status, headers={"Cache-Control": "no-cache"})


@pages.get("/")
async def jobs_page() -> HTMLResponse:
    return _page("index.html")


@pages.get("/jobs/{name}")
async def job_page(name: str, request: Request) -> HTMLResponse:
    known = request.app.state.dashboard.jobs.get(name) is not None
    return _page("job.html", 200 if known else 404)


@pages.get("/static/{name}")
async def static(name: str) -> Response:
    media_type = _STATIC.get(name)
    if media_type is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(_read(name), media_type=media_type, headers={"Cache-Control": "no-cache"})
