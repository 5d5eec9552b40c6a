"""The pydantic models of the job router's responses (they appear in the app's OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from conveyor.model import JobRecord, JobStatus

__all__ = [
    "ErrorOut", "JobEventOut", "JobOut", "JobPage", "ProblemOut", "ProgressOut", "StatsOut", "servable",
]


def servable(value: Any) -> Any:
    """A str with every lone surrogate replaced by U+FFFD (other values as they are)."""
    if not isinstance(value, str) or value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    return value


class ErrorOut(BaseModel):
    """A stored failure."""

    type: str = Field(description="exception type, e.g. ConnectionError or myapp.mail.Bounced")
    message: str
    traceback: str


class ProgressOut(BaseModel):
    """The last progress the task reported."""

    fraction: float = Field(ge=0.0, le=1.0)
    message: str


class JobOut(BaseModel):
    """One job record."""

    id: str = Field(description="UUIDv7: time-ordered")
    task: str
    queue: str
    status: JobStatus
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    key: str | None = Field(description="ordering lane: jobs with the same key run one at a time")
    unique: str | None
    attempts: int
    max_attempts: int
    timeout: float | None = Field(description="seconds per attempt")
    enqueued_at: datetime
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result: Any = Field(description="the task's return value as JSON, once succeeded")
    error: ErrorOut | None = Field(description="the last failure, kept while the job retries")
    progress: ProgressOut | None
    worker: str | None
    cancel_requested: bool
    meta: dict[str, str] = Field(
        default_factory=dict, description="the job's metadata (trace context, tenant...)"
    )

    @classmethod
    def of(cls, record: JobRecord) -> JobOut:
        """The response model of a stored record.

        Enqueue refuses text that is not valid Unicode, but an exception message or a progress
        message is whatever the task made (a file name decoded with ``surrogateescape``, say):
        lone surrogates there become U+FFFD, or the record, and any page listing it, could not
        be served as JSON at all.
        """
        data = record.to_dict()
        for field in ("error", "progress"):
            if data[field] is not None:
                data[field] = {k: servable(v) for k, v in data[field].items()}
        return cls.model_validate(data)


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


class StatsOut(BaseModel):
    """How many jobs of the queue are in each status."""

    queue: str
    counts: dict[JobStatus, int]
    total: int


class JobEventOut(BaseModel):
    """One Server-Sent Event's data: a status change or a progress report of a job.

    On the wire: ``id:`` is ``seq`` (send it back as ``Last-Event-ID``), ``event:`` is ``type``.
    """

    job_id: str
    seq: int = Field(ge=1, description="increases per job from 1")
    type: Literal["status", "progress"]
    at: datetime
    data: dict[str, Any] = Field(
        description='status: {"status", "attempt", ...}; progress: {"fraction", "message"}'
    )


class ProblemOut(BaseModel):
    """An error response."""

    detail: str
