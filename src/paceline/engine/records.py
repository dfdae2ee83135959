"""What a run shows and how it ended: plain records the reporters and the web read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["INTERRUPTED", "RunResult", "Snapshot"]

#: Stop reasons that leave work undone at the user's request (exit code 130).
INTERRUPTED = frozenset({"interrupted", "stop requested", "error"})


@dataclass(slots=True)
class Snapshot:
    """What the reporter shows: counts, rates and recent errors, at one moment."""

    job: str
    total: int
    done: int
    failed: int
    pending: int
    skipped: int
    running: int
    retrying: int
    source_done: bool
    elapsed: float
    rate_now: float
    rate_avg: float
    rate_peak: float
    eta: float | None
    done_this_run: int
    failed_this_run: int
    errors: list[tuple[str, str]]
    keys: list[dict[str, Any]]
    duplicates: int
    stopping: str | None
    notes: list[str] = field(default_factory=list)
    notes_total: int = 0
    quota_until: float | None = None
    workers: int = 0
    batch_size: int = 0
    cost_total: float = 0.0
    cost_per_item: float | None = None
    cost_per_minute: float | None = None
    #: The job's worker processes alive now (from the store), this one included.
    peers: list[dict[str, Any]] = field(default_factory=list)
    #: While the provider fails for everyone: since when, why, when the next probe goes.
    circuit: dict[str, Any] | None = None
    #: A few of the ids the source repeats (for the summary).
    duplicate_examples: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RunResult:
    """How a run ended. ``exit_code`` follows the CLI's: 0, 1 (failures), 2 (no usable
    key), 130 (stopped)."""

    snapshot: Snapshot
    interrupted: bool
    stop_reason: str | None
    store: str
    sink: str
    #: Why the run could not go on (the store or the sink failed), in one line.
    error: str | None = None
    #: The job file the run came from, to name it in the summary's hints.
    jobfile: str | None = None
    exit_code: int = field(init=False)

    def __post_init__(self) -> None:
        if self.stop_reason == "no usable key" or self.error is not None:
            self.exit_code = 2
        elif self.interrupted:
            self.exit_code = 130
        elif self.snapshot.failed:
            self.exit_code = 1
        else:
            self.exit_code = 0
