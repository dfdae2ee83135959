"""``paceline serve``: a web dashboard and a JSON API over the functions the CLI uses.

::

    app      the FastAPI application and the server it runs in
    api      /api/...: jobs, status, start, stop, retry, expedite, failures, events
    forms    the start form, its file streamed into the job's upload inbox
    pages    the jobs list and job pages (static HTML, one script, one style sheet)
    jobs     the job files served: found in folders, loaded once, looked up by name
    runs     runs started from the page: detached ``paceline run`` processes, their logs
    events   one shared poll per watched job, fanned out as server-sent events
    auth     the bearer token and the short-lived tickets of event streams
    metrics  Prometheus metrics (serve, and ``paceline run --metrics-port``)
    notify   ``--notify URL``: a JSON summary POSTed when a run ends

Nothing here needs a job's API keys, and nothing served carries one: keys appear masked.
The extra ``paceline[web]`` brings FastAPI, sse-starlette, prometheus-client and
python-multipart; :func:`missing` names what is not installed.
"""

from __future__ import annotations

import importlib.util

__all__ = ["HINT", "missing"]

HINT = "pip install 'paceline[web]'"
_NEEDS = {
    "fastapi": "fastapi",
    "sse_starlette": "sse-starlette",
    "prometheus_client": "prometheus-client",
    "python_multipart": "python-multipart",
}


def missing(modules: tuple[str, ...] = tuple(_NEEDS)) -> list[str]:
    """The distributions of the web extra that cannot be imported."""
    gone = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules
            found = False
        if not found:
            gone.append(_NEEDS[module])
    return gone
