"""The stored job record, its statuses, and the events a job emits.

This is the bottom layer: backends store these, everything above reads them.
Datetimes are aware UTC; durations are seconds.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal, TypedDict

__all__ = [
    "ACTIVE",
    "EMPTY_META",
    "TERMINAL",
    "ErrorInfo",
    "Event",
    "JobRecord",
    "JobStatus",
    "ProgressInfo",
    "from_timestamp",
    "new_id",
    "new_token",
    "utcnow",
]


class JobStatus(StrEnum):
    """Where a job is in its life.

    ``queued`` and ``scheduled`` (waiting for ``scheduled_for``, a delay or a retry backoff) have not
    started this attempt; ``running`` holds a lease; the rest are final: ``succeeded``,
    ``failed`` (an error with no retries left to try, retries not configured),
    ``dead`` (the last of several attempts failed: the dead-letter state), ``cancelled``.
    """

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def terminal(self) -> bool:
        """True once the job will not run again on its own."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING})


class ErrorInfo(TypedDict):
    """A stored failure: exception type, message and traceback text."""

    type: str
    message: str
    traceback: str


class ProgressInfo(TypedDict):
    """The last progress a task reported: fraction in [0, 1] and a message."""

    fraction: float
    message: str


def utcnow() -> datetime:
    """Now, aware UTC."""
    return datetime.now(UTC)


def from_timestamp(ts: float | None) -> datetime | None:
    """A POSIX timestamp as an aware UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


_id_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """A UUIDv7 string: time-ordered, and strictly increasing within this process."""
    global _last_ms, _counter
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # room to count up within 1 ms
        else:
            _counter += 1
            if _counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_token() -> str:
    """A random lease token."""
    return secrets.token_hex(8)


#: the metadata of a job that has none: one shared, read-only empty mapping (no dict per job)
EMPTY_META: Mapping[str, str] = MappingProxyType({})


def _no_meta() -> Mapping[str, str]:
    return EMPTY_META


@dataclass(slots=True)
class JobRecord:
    """One job as stored. ``job.info()`` returns it; the REST API serves ``to_dict()``."""

    id: str
    task: str
    queue: str = "default"
    status: JobStatus = JobStatus.QUEUED
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    key: str | None = None
    unique: str | None = None
    attempts: int = 0
    max_attempts: int = 1
    timeout: float | None = None
    enqueued_at: datetime = field(default_factory=utcnow)
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: ErrorInfo | None = None
    progress: ProgressInfo | None = None
    # retry policy chosen at enqueue time (Retry.to_dict()); None means "the task's own"
    retry: dict[str, Any] | None = None
    worker: str | None = None
    cancel_requested: bool = False
    # lease: set while running; `lease_token` fences every acknowledgement of this attempt
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    # enqueue-time instruction, not stored: cancel queued jobs of the same key
    supersede: bool = False
    #: small str -> str metadata carried with the job (trace context, tenant...): set by
    #: producers (``task.options(meta=...)``) and middlewares, read by tasks (``ctx.meta``).
    #: Treat it as read-only: to change it, assign a new dict.
    meta: Mapping[str, str] = field(default_factory=_no_meta)

    def to_dict(self) -> dict[str, Any]:
        """The public fields as JSON-ready values (datetimes as ISO 8601 strings)."""

        def iso(d: datetime | None) -> str | None:
            return None if d is None else d.isoformat()

        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "status": self.status.value,
            "args": self.args,
            "kwargs": self.kwargs,
            "priority": self.priority,
            "key": self.key,
            "unique": self.unique,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "enqueued_at": iso(self.enqueued_at),
            "scheduled_for": iso(self.scheduled_for),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "result": self.result,
            "error": self.error,
            "progress": self.progress,
            "worker": self.worker,
            "cancel_requested": self.cancel_requested,
            "meta": dict(self.meta),
        }


EventType = Literal["status", "progress"]


@dataclass(slots=True, frozen=True)
class Event:
    """Something that happened to a job. ``seq`` increases per job, from 1."""

    job_id: str
    seq: int
    type: EventType
    at: datetime
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        """True for the status event that ends the job."""
        return self.type == "status" and JobStatus(self.data["status"]).terminal

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "job_id": self.job_id, "seq": self.seq, "type": self.type,
            "at": self.at.isoformat(), "data": self.data,
        }
