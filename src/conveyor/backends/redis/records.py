"""How records and times travel between Python and the Lua scripts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from conveyor.model import JobRecord, JobStatus, from_timestamp
from conveyor.serde import load_meta, load_stored

__all__ = ["FIELDS", "dt", "record", "ts"]

# the order of lib.lua's FIELDS: how every script returns a record
FIELDS = (
    "id", "task", "queue", "status", "args", "kwargs", "priority", "key", "unique", "attempts",
    "max_attempts", "timeout", "enqueued_at", "scheduled_for", "started_at", "finished_at",
    "result", "error", "progress", "retry", "worker", "cancel_requested", "lease_token",
    "lease_expires_at", "meta",
)


def ts(d: datetime | None) -> str:
    """A time as a script takes it ('' for none)."""
    # repr keeps every digit of the float: a stored time reads back exactly
    return "" if d is None else repr(d.timestamp())


def dt(text: str | None) -> datetime | None:
    """A stored time back as an aware datetime."""
    return None if text is None else from_timestamp(float(text))


def record(v: Sequence[str | None]) -> JobRecord:
    """A record from the values of lib.lua's FIELDS (absent fields are None)."""
    return JobRecord(
        id=v[0], task=v[1], queue=v[2], status=JobStatus(v[3]),  # type: ignore[arg-type]
        args=load_stored(v[4]), kwargs=load_stored(v[5]), priority=int(v[6] or 0), key=v[7],
        unique=v[8],
        attempts=int(v[9] or 0), max_attempts=int(v[10] or 1),
        timeout=None if v[11] is None else float(v[11]),
        enqueued_at=dt(v[12]),  # type: ignore[arg-type]
        scheduled_for=dt(v[13]), started_at=dt(v[14]), finished_at=dt(v[15]),
        result=load_stored(v[16]), error=load_stored(v[17]), progress=load_stored(v[18]),
        retry=load_stored(v[19]),
        worker=v[20], cancel_requested=v[21] == "1", lease_token=v[22],
        lease_expires_at=dt(v[23]), meta=load_meta(v[24] if len(v) > 24 else None),
    )
