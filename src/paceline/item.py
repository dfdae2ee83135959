"""Items: the units of work, and the statuses they move through."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Item", "Status"]


class Status(enum.StrEnum):
    """Where an item stands. ``retry`` items wait in the store until their due time;
    ``skipped`` ones needed no work (the job's ``needs`` said so)."""

    PENDING = "pending"
    RUNNING = "running"
    RETRY = "retry"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work, as the task sees it.

    ``id`` is the stable id from the source, ``data`` the source record, ``attempts`` how
    many attempts came before this one (0 on the first).
    """

    id: str
    data: dict[str, Any]
    priority: float = 0.0
    attempts: int = 0
    seq: int = field(default=0, repr=False, compare=False)
    #: Where the item starts in its source (byte offset or record count), to read it again.
    source_at: int | None = field(default=None, repr=False, compare=False)
    #: The source line it starts on (its number, for messages).
    line: int | None = field(default=None, repr=False, compare=False)
    #: False when the store no longer holds the record (dropped once done, or kept out
    #: by ``secret_fields``): the engine reads it again from the source before the task.
    whole: bool = field(default=True, repr=False, compare=False)
