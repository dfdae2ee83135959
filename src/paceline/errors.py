"""Every error paceline raises on purpose.

::

    PacelineError
    ├── ConfigError          bad job file, option or source: the CLI exits 2 with one line
    │   ├── JobAlreadyRunning  another live run holds the job's store
    │   └── NoUsableKey        every key of the pool was rejected by the provider
    ├── MetersUnavailable    the shared meter backend (Redis) cannot be reached; the limiter waits
    ├── StoreError           the store cannot be opened, read or written
    ├── SinkError            the sink cannot take rows (its disk, its database)
    └── TaskError            raised *by task code* to say how paceline should treat a failure
        ├── Retryable        try the item again later (optionally after ``retry_after`` s)
        └── Permanent        give up on the item now, whatever the retry budget
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "JobAlreadyRunning",
    "MetersUnavailable",
    "NoUsableKey",
    "PacelineError",
    "Permanent",
    "Retryable",
    "SinkError",
    "StoreError",
    "TaskError",
]


class PacelineError(Exception):
    """Base of every error paceline raises on purpose."""


class ConfigError(PacelineError):
    """The job, an option or the source is wrong; the message says what to change."""


class JobAlreadyRunning(ConfigError):
    """Another live process is running the same job on the same store."""


class NoUsableKey(ConfigError):
    """Every key of the pool was rejected by the provider."""


class MetersUnavailable(PacelineError):
    """The shared meter backend (Redis) did not answer.

    The limiter does not pass it on: requests wait, and it asks again with a backoff.
    """


class StoreError(PacelineError):
    """The store could not be opened or read."""


class SinkError(PacelineError):
    """The sink cannot take rows: its disk is full, its database is gone."""


class TaskError(PacelineError):
    """Raised by task code to steer what happens to the item."""


class Retryable(TaskError):
    """The item failed for a passing reason: try it again later.

    >>> raise Retryable("upstream busy", retry_after=30)  # doctest: +SKIP
    """

    def __init__(self, message: str = "retryable failure", *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Permanent(TaskError):
    """The item cannot succeed: fail it now, without using the retry budget."""
