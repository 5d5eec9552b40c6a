"""Transitions: enqueue (also on a caller's connection), and every verb that moves a stored job.

Each verb is one call of a SQL function of conveyor's schema (``sql/``): one round trip, one
transaction, however many jobs it carries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from conveyor.backends.base import Ack, Lease, worker_lost
from conveyor.backends.postgres.core import PostgresCore
from conveyor.backends.postgres.records import COLUMNS, Row, record, record_from_json
from conveyor.errors import BackendError, PayloadTooLarge
from conveyor.model import ErrorInfo, JobRecord, JobStatus
from conveyor.serde import dump_json

__all__ = [
    "MAX_ENQUEUE_BYTES",
    "MAX_ENQUEUE_JOBS",
    "Fetch",
    "TransitionVerbs",
    "enqueue_on",
    "enqueue_params",
    "enqueue_sql",
]

#: jobs one enqueue takes at most: one call is one transaction that holds its lanes' locks
#: until it ends (the same limit as Redis; bigger batches are refused, never split)
MAX_ENQUEUE_JOBS = 50_000
#: the encoded arguments of one enqueue, at most (the same limit as Redis)
MAX_ENQUEUE_BYTES = 256 << 20
_RECOVER_BATCH = 1000

#: Runs one statement on a connection and returns its rows (each indexable by position):
#: ``await fetch(sql, params)``. The SQL uses ``$1, $2, ...`` placeholders (asyncpg's style),
#: each once and in order, so a driver with ``%s`` placeholders can swap them one for one.
Fetch = Callable[[str, Sequence[Any]], Awaitable[Sequence[Row]]]


def enqueue_sql(schema: str) -> str:
    """The statement that stores a batch in ``schema`` (parameters: :func:`enqueue_params`).

    It answers one row per job (its place from 1, the answering id and status, whether that
    record existed, and then its JSON), in no particular order: :func:`enqueue_on` reads them.
    """
    return (
        f'SELECT o_ord, o_id, o_status, o_existing, o_record FROM "{schema}".enqueue('
        "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[], $7::text[], "
        "$8::text[], $9::integer[], $10::double precision[], $11::timestamptz[], "
        "$12::timestamptz[], $13::text[], $14::boolean[], $15::text[])"
    )


def enqueue_params(jobs: Sequence[JobRecord]) -> tuple[list[Any], ...]:
    """The enqueue statement's 15 array parameters for ``jobs``; PayloadTooLarge past the limits."""
    if len(jobs) > MAX_ENQUEUE_JOBS:
        raise PayloadTooLarge(
            f"{len(jobs)} jobs in one enqueue: PostgreSQL takes at most {MAX_ENQUEUE_JOBS} per "
            "call (one transaction holds its lanes until it ends); split the batch"
        )
    args = [dump_json(job.args) for job in jobs]
    kwargs = [dump_json(job.kwargs) for job in jobs]
    size = sum(map(len, args)) + sum(map(len, kwargs))  # ASCII JSON: characters are bytes
    if size > MAX_ENQUEUE_BYTES:
        raise PayloadTooLarge(
            f"the batch's arguments are {size} bytes as JSON, over the {MAX_ENQUEUE_BYTES}-byte "
            "limit of one PostgreSQL enqueue; split the batch"
        )
    return (
        [job.id for job in jobs], [job.task for job in jobs], [job.queue for job in jobs],
        args, kwargs, [job.priority for job in jobs], [job.key for job in jobs],
        [job.unique for job in jobs], [job.max_attempts for job in jobs],
        [None if job.timeout is None else float(job.timeout) for job in jobs],
        [job.enqueued_at for job in jobs], [job.scheduled_for for job in jobs],
        [None if job.retry is None else dump_json(job.retry) for job in jobs],
        [job.supersede for job in jobs],
        [dump_json(dict(job.meta)) if job.meta else None for job in jobs],
    )


async def enqueue_on(fetch: Fetch, schema: str, jobs: Sequence[JobRecord]) -> list[JobRecord]:
    """Store ``jobs`` through ``fetch``, in whatever transaction its connection has open.

    Nothing here commits or rolls back: on a caller's open transaction the jobs exist, and
    workers are woken (NOTIFY), only once the caller commits; a rollback leaves no trace. The
    answers are as ``Backend.enqueue`` gives them: one round trip.
    """
    if not jobs:
        return []
    firsts: dict[str, int] = {}
    for i, job in enumerate(jobs):
        firsts.setdefault(job.id, i)
    distinct = [job for i, job in enumerate(jobs) if firsts[job.id] == i]
    rows = await fetch(enqueue_sql(schema), enqueue_params(distinct))
    answers = {int(row[0]) - 1: (row[1], row[2], row[4]) for row in rows}
    if len(answers) != len(distinct) or any(a[0] is None for a in answers.values()):
        raise BackendError("postgresql enqueue: the store did not answer for every job")
    out: list[JobRecord] = []
    for i, job in enumerate(distinct):
        _, status, existing = answers[i]
        if existing is not None:
            out.append(record_from_json(existing))
        else:
            out.append(replace(job, status=JobStatus(status), attempts=0, supersede=False))
    by_id = {job.id: rec for job, rec in zip(distinct, out, strict=True)}
    return [replace(by_id[job.id]) for job in jobs]


class TransitionVerbs(PostgresCore):
    """enqueue, complete, fail, release, cancel, retry, recover, progress."""

    async def _fetch(self, sql: str, params: Sequence[Any]) -> Sequence[Row]:
        return await self.db.fetch("enqueue", sql, *params)

    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        out = await enqueue_on(self._fetch, self.schema, jobs)
        if jobs:
            self._wake.set()  # a worker of this process need not wait for the NOTIFY
        return out

    async def enqueue_in(self, connection: object, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        from conveyor.backends.postgres.caller import caller_fetch

        fetch = caller_fetch(connection)  # checked before anything is written
        # no local wake: workers are woken by the NOTIFY, delivered when the caller commits
        return await enqueue_on(fetch, self.schema, jobs)

    async def complete(self, acks: Sequence[Ack]) -> list[bool]:
        if not acks:
            return []
        rows = await self.db.fetch(
            "complete", f"SELECT {self.s}.complete($1, $2, $3)",
            [a.job_id for a in acks], [a.token for a in acks], [dump_json(a.result) for a in acks],
        )
        taken = {row[0] for row in rows}
        return [i in taken for i in range(1, len(acks) + 1)]

    async def fail(
        self, lease: Lease, error: ErrorInfo, *, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        final = JobStatus.DEAD if dead else JobStatus.FAILED
        taken = await self.db.fetchval(
            "fail", f"SELECT {self.s}.fail($1, $2, $3, $4, $5)",
            lease.job_id, lease.token, dump_json(error), retry_at, final.value,
        )
        return bool(taken)

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []
        rows = await self.db.fetch(
            "release", f"SELECT {self.s}.release($1, $2)",
            [held.job_id for held in leases], [held.token for held in leases],
        )
        self._wake.set()
        taken = {row[0] for row in rows}
        return [i in taken for i in range(1, len(leases) + 1)]

    async def cancel(
        self, job_id: str, *, lease: Lease | None = None, error: ErrorInfo | None = None
    ) -> JobRecord | None:
        rows = await self.db.fetch(
            "cancel", f"SELECT {COLUMNS} FROM {self.s}.cancel($1, $2, $3)",
            job_id, None if lease is None else lease.token,
            None if error is None else dump_json(error),
        )
        return record(rows[0]) if rows else None

    async def retry(self, job_id: str) -> JobRecord | None:
        rows = await self.db.fetch(
            "retry", f"SELECT {COLUMNS} FROM {self.s}.retry($1)", job_id
        )
        self._wake.set()
        return record(rows[0]) if rows else None

    async def recover(self, max_lost: int | None = None) -> list[str]:
        error = dump_json(worker_lost(max_lost or 0))
        rows = await self.db.fetch(
            "recover", f"SELECT {self.s}.recover($1, $2, $3)", max_lost, error, _RECOVER_BATCH
        )
        if rows:
            self._wake.set()
        return [row[0] for row in rows]

    async def progress(self, lease: Lease, fraction: float, message: str) -> bool:
        text = dump_json({"fraction": fraction, "message": message})
        # one statement: the fenced update numbers the event, the insert appends it
        rows = await self.db.fetch(
            "progress",
            f"WITH u AS (UPDATE {self.s}.jobs SET progress = $3, last_event = last_event + 1 "
            "WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING last_event) "
            f"INSERT INTO {self.s}.events (job_id, seq, type, at, data) "
            "SELECT $1, u.last_event, 'progress', clock_timestamp(), $3 FROM u RETURNING seq",
            lease.job_id, lease.token, text,
        )
        return bool(rows)
