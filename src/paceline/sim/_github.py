"""GitHub's REST wire format: repositories, their commits and languages, and ``/rate_limit``.

The token comes as ``Authorization: token KEY`` or ``Bearer KEY``. The primary limit is the
hourly ``rph`` meter, reported in ``x-ratelimit-*`` headers with the window's end as epoch
seconds (https://docs.github.com/rest/overview/rate-limits-for-the-rest-api). Running out of
it answers 403 (or 429, see ``SimConfig.github_limit_status``) with ``remaining: 0``; any other
meter (per minute, tokens, per day, concurrency) plays GitHub's *secondary* limit: 403 with a
``retry-after`` header. Bodies are derived from owner/repo, so every run sees the same data;
a repository whose name starts with ``missing`` answers 404, to exercise errors that must not
be retried.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from paceline.sim._wire import Call, json_response, stable_number
from paceline.sim.limits import KeyState, Rejection, Window

__all__ = ["GitHubStyle", "rate_limit_body"]

_DOCS = "https://docs.github.com/rest"
_LIMIT_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
_LANGUAGES = ("Python", "Go", "Rust", "TypeScript", "C", "Shell", "HTML", "Makefile")
_EPOCH = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
_FAULTS = {500: "Server Error", 502: "Server Error", 503: "Service Unavailable"}
MAX_PER_PAGE = 100


def _message(
    status: int, message: str, docs: str, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"message": message, "documentation_url": docs}, status, headers)


def _iso(seconds_after_epoch: int) -> str:
    return (_EPOCH + dt.timedelta(seconds=seconds_after_epoch)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _repository(owner: str, repo: str) -> dict[str, Any]:
    seed = stable_number(owner, repo)
    full = f"{owner}/{repo}"
    return {
        "id": seed % 900_000_000 + 1,
        "name": repo,
        "full_name": full,
        "owner": {"login": owner, "id": stable_number(owner) % 90_000_000 + 1, "type": "User"},
        "private": False,
        "html_url": f"https://github.com/{full}",
        "description": f"Simulated repository {full}",
        "fork": seed % 7 == 0,
        "created_at": _iso(seed % 200_000_000),
        "pushed_at": _iso(200_000_000 + seed % 100_000_000),
        "stargazers_count": seed % 5_000,
        "watchers_count": seed % 5_000,
        "forks_count": seed % 700,
        "open_issues_count": seed % 90,
        "language": _LANGUAGES[seed % len(_LANGUAGES)],
        "default_branch": "main",
        "topics": [],
    }


def _commits(owner: str, repo: str, page: int, per_page: int) -> tuple[list[Any], bool]:
    seed = stable_number(owner, repo)
    total = seed % 120 + 1
    start = (page - 1) * per_page
    commits = []
    for n in range(start, min(total, start + per_page)):
        sha = f"{stable_number(owner, repo, str(n)):016x}" * 3
        date = _iso(300_000_000 - n * 3_600)
        commits.append(
            {
                "sha": sha[:40],
                "commit": {
                    "author": {"name": owner, "email": f"{owner}@example.com", "date": date},
                    "message": f"Change {total - n} of {repo}",
                },
                "author": {"login": owner},
                "html_url": f"https://github.com/{owner}/{repo}/commit/{sha[:40]}",
            }
        )
    return commits, start + per_page < total


def _languages(owner: str, repo: str) -> dict[str, int]:
    seed = stable_number(owner, repo)
    count = seed % 3 + 1
    return {
        _LANGUAGES[(seed + i) % len(_LANGUAGES)]: (seed >> (8 * i)) % 500_000 + 100
        for i in range(count)
    }


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


def rate_limit_body(window: Window | None) -> dict[str, Any]:
    """The ``GET /rate_limit`` answer; ``resources`` is empty when no hourly limit is set."""
    if window is None:
        return {"resources": {}, "rate": None}
    core = {
        "limit": window.limit,
        "used": window.used,
        "remaining": window.remaining,
        "reset": math.ceil(window.resets_at),
        "resource": "core",
    }
    return {"resources": {"core": core}, "rate": core}


class GitHubStyle:
    """The slice of GitHub's REST API that repository ingestion needs."""

    fault_statuses: tuple[int, ...] = (500, 502, 503)

    def __init__(self, limit_status: int = 403) -> None:
        self.limit_status = limit_status

    def read_key(self, request: Request) -> str | None:
        """The token of ``Authorization: token KEY`` or ``Authorization: Bearer KEY``."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        return key if scheme.lower() in ("token", "bearer") and key else None

    async def parse(self, request: Request, now: float) -> Call | Response:
        """Which resource is asked for; the body is derived from owner and repo."""
        owner = request.path_params["owner"]
        repo = request.path_params["repo"]
        resource = request.path_params.get("resource", "")
        if repo.startswith("missing") or resource not in ("", "commits", "languages"):
            body = {"message": "Not Found", "documentation_url": f"{_DOCS}/repos/repos"}
            return Call(model="", tokens=0, usage=0, body=body, status=404)
        if resource == "commits":
            page = _int_param(request, "page", 1)
            per_page = min(MAX_PER_PAGE, _int_param(request, "per_page", 30))
            commits, more = _commits(owner, repo, page, per_page)
            headers = {}
            if more:
                url = request.url.include_query_params(page=page + 1, per_page=per_page)
                headers["link"] = f'<{url}>; rel="next"'
            return Call(model="", tokens=0, usage=0, body=commits, headers=headers)
        if resource == "languages":
            return Call(model="", tokens=0, usage=0, body=_languages(owner, repo))
        return Call(model="", tokens=0, usage=0, body=_repository(owner, repo))

    def headers(self, state: KeyState) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset,used,resource}`` of the hourly window."""
        window = state.rph
        if window is None:
            return {}
        return {
            "x-ratelimit-limit": str(window.limit),
            "x-ratelimit-remaining": str(window.remaining),
            "x-ratelimit-reset": str(math.ceil(window.resets_at)),
            "x-ratelimit-used": str(window.used),
            "x-ratelimit-resource": "core",
        }

    def missing_key(self) -> Response:
        """GitHub's 401 for an endpoint that needs a token."""
        return _message(401, "Requires authentication", _DOCS)

    def invalid_key(self, key: str) -> Response:
        """GitHub's 401 ``Bad credentials``."""
        return _message(401, "Bad credentials", _DOCS)

    def rate_limited(
        self, rejection: Rejection, call: Call, state: KeyState, headers: dict[str, str]
    ) -> Response:
        """Primary limit: 403/429 with ``remaining: 0``; anything else: a secondary limit."""
        if rejection.meter == "rph":
            message = "API rate limit exceeded for user ID 1."
            return _message(self.limit_status, message, _LIMIT_DOCS, headers)
        headers = dict(headers)
        wait = rejection.retry_after if rejection.retry_after is not None else 60.0
        headers["retry-after"] = str(max(1, math.ceil(wait)))
        message = (
            "You have exceeded a secondary rate limit. Please wait a few minutes before you "
            "try again. If you reach out to GitHub Support for help, please include the "
            "request ID SIM:0000."
        )
        docs = f"{_LIMIT_DOCS}#about-secondary-rate-limits"
        return _message(403, message, docs, headers)

    def fault(self, status: int, headers: dict[str, str]) -> Response:
        """A terse 5xx, as GitHub's are."""
        return _message(status, _FAULTS.get(status, _FAULTS[500]), _DOCS, headers)
