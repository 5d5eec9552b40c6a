"""Every error conveyor raises, in one tree.

```
ConveyorError
├── ConfigError              bad URL, unknown setting, task registered twice, bad name
│   └── OptionError          an option of the wrong type or out of range (priority, delay, ...)
├── BackendError             the storage engine failed (driver error as __cause__)
├── JobNotFound              no job with that id
├── StartupError             a worker's lifespan or a middleware failed to start; nothing was claimed
├── EnqueueError             the job was rejected at enqueue; nothing was written
│   ├── ArgumentError        arguments do not match the task's signature or types
│   ├── NotSerializable      a value is not JSON (set, bytes, NaN, a DB session, ...)
│   │   └── LimitExceeded    JSON, but past a documented limit (nesting depth, int size)
│   ├── PayloadTooLarge      the encoded arguments exceed the size cap
│   ├── BadKey               key= or unique= is empty, too long, or not storable text
│   ├── BadMeta              meta= is not str -> str, or past its size limits
│   └── UnknownTask          no task of that name is registered
└── JobError                 the outcome of a job, raised by Job.result()
    ├── JobFailed            the job failed (or is dead); `.error` holds type, message, traceback
    ├── JobCancelled         the job was cancelled
    └── JobTimeout           waiting for the result took longer than asked
```

Each class's docstring is its default message. The limits behind ``OptionError``,
``LimitExceeded`` and ``BadKey`` are listed in ``docs/semantics.md`` (Limits).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentError",
    "BackendError",
    "BadKey",
    "BadMeta",
    "ConfigError",
    "ConveyorError",
    "EnqueueError",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "LimitExceeded",
    "NotSerializable",
    "OptionError",
    "PayloadTooLarge",
    "StartupError",
    "UnknownTask",
]


class ConveyorError(Exception):
    """A conveyor error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0]) if self.args else ""


class ConfigError(ConveyorError):
    """The configuration is invalid."""


class OptionError(ConfigError):
    """An option is of the wrong type or out of range."""


class BackendError(ConveyorError):
    """The storage backend failed."""


class StartupError(ConveyorError):
    """The worker could not start: its lifespan or a middleware failed (the cause is attached).

    A worker whose start-up fails claims nothing.
    """


class JobNotFound(ConveyorError):
    """No job has that id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class EnqueueError(ConveyorError):
    """The job was rejected at enqueue; nothing was written."""


class ArgumentError(EnqueueError):
    """The arguments do not match the task's signature."""


class NotSerializable(EnqueueError):
    """A value cannot be stored as JSON."""


class LimitExceeded(NotSerializable):
    """A value is JSON, but past one of conveyor's limits (nesting depth, integer size)."""


class BadKey(EnqueueError):
    """A key= or unique= value is empty, too long, or holds text that cannot be stored."""


class BadMeta(EnqueueError):
    """A job's meta is not a mapping of str to str, or is past its limits (entries, size)."""


class PayloadTooLarge(EnqueueError):
    """The encoded arguments are larger than the size cap."""


class UnknownTask(EnqueueError):
    """No task of that name is registered."""


class JobError(ConveyorError):
    """The job did not produce a result."""

    def __init__(self, message: str | None = None, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(JobError):
    """The job failed."""

    def __init__(
        self, message: str | None = None, *, job_id: str | None = None,
        error: dict[str, Any] | None = None, status: str = "failed",
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.error: dict[str, Any] = error or {}
        self.status = status

    @property
    def type(self) -> str:
        """The stored exception type, e.g. ``"ValueError"``."""
        return str(self.error.get("type", ""))

    @property
    def traceback(self) -> str:
        """The stored traceback text."""
        return str(self.error.get("traceback", ""))


class JobCancelled(JobError):
    """The job was cancelled."""


class JobTimeout(JobError):
    """The job did not finish within the time waited for it."""
