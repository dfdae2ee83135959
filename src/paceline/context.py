"""What a task receives besides its item."""

from __future__ import annotations

from dataclasses import dataclass

from .client import PoolClient
from .clock import Clock

__all__ = ["Context"]


@dataclass(frozen=True, slots=True)
class Context:
    """Per-attempt context: ``http`` (bound to the key pool), the job name, the clock.

    ``attempt`` counts from 1.
    """

    http: PoolClient
    job: str
    attempt: int
    clock: Clock
