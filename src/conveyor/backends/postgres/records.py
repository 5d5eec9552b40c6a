"""Rows of ``<schema>.jobs`` as :class:`~conveyor.model.JobRecord` (what crosses the wire)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from conveyor.model import JobRecord, JobStatus
from conveyor.serde import dump_json, load_stored

__all__ = ["COLUMNS", "extra_json", "record"]

#: the columns ``record`` reads, for SELECTs of their own
COLUMNS = (
    "id, task, queue, status, args, kwargs, priority, key, unique_key, attempts, max_attempts, "
    "timeout, enqueued_at, scheduled_for, started_at, finished_at, result, error, progress, "
    "retry, worker, cancel_requested, lease_token, lease_expires_at, pos"
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)  # a driver that gives the session's time zone


def record(row: Sequence[Any]) -> JobRecord:
    """The job in a row selected as ``COLUMNS`` (by position, so any driver's rows do)."""
    enqueued = _utc(row[12])
    assert enqueued is not None
    return JobRecord(
        id=row[0], task=row[1], queue=row[2], status=JobStatus(row[3]),
        args=load_stored(row[4]), kwargs=load_stored(row[5]), priority=row[6], key=row[7],
        unique=row[8], attempts=row[9], max_attempts=row[10], timeout=row[11],
        enqueued_at=enqueued, scheduled_for=_utc(row[13]), started_at=_utc(row[14]),
        finished_at=_utc(row[15]), result=load_stored(row[16]), error=load_stored(row[17]),
        progress=load_stored(row[18]), retry=load_stored(row[19]), worker=row[20],
        cancel_requested=row[21], lease_token=row[22], lease_expires_at=_utc(row[23]),
    )


def extra_json(**fields: object) -> str:
    """More members for a status event's JSON object, as ``,"name":value`` text."""
    return "".join(f",{dump_json(name)}:{dump_json(value)}" for name, value in fields.items())
