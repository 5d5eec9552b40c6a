"""Rows of ``<schema>.jobs`` as :class:`~conveyor.model.JobRecord` (what crosses the wire)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

from conveyor.model import JobRecord, JobStatus
from conveyor.serde import load_meta, load_stored

__all__ = ["COLUMNS", "Row", "record", "record_from_json"]


class Row(Protocol):
    """A row of any driver: its values by position."""

    def __getitem__(self, index: int, /) -> Any: ...

#: the columns ``record`` reads, for SELECTs of their own
COLUMNS = (
    "id, task, queue, status, args, kwargs, priority, key, unique_key, attempts, max_attempts, "
    "timeout, enqueued_at, scheduled_for, started_at, finished_at, result, error, progress, "
    "retry, worker, cancel_requested, lease_token, lease_expires_at, pos, meta"
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)  # a driver that gives the session's time zone


def record(row: Row | list[Any]) -> JobRecord:
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
        meta=load_meta(row[25]),
    )


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


def record_from_json(text: str) -> JobRecord:
    """The job in a row given as JSON (``row_to_json``), as enqueue answers for stored jobs."""
    row = json.loads(text)
    return record([
        row["id"], row["task"], row["queue"], row["status"], row["args"], row["kwargs"],
        row["priority"], row["key"], row["unique_key"], row["attempts"], row["max_attempts"],
        None if row["timeout"] is None else float(row["timeout"]),
        _when(row["enqueued_at"]), _when(row["scheduled_for"]),
        _when(row["started_at"]), _when(row["finished_at"]), row["result"], row["error"],
        row["progress"], row["retry"], row["worker"], row["cancel_requested"],
        row["lease_token"], _when(row["lease_expires_at"]), row["pos"], row.get("meta"),
    ])
