"""The engine: one worker's run of a job (see :mod:`.run` for how the pieces fit)."""

from .records import RunResult, Snapshot
from .run import Engine

__all__ = ["Engine", "RunResult", "Snapshot"]
