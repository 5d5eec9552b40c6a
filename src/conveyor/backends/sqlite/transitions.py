"""Transitions: enqueue, and every verb that moves a job once it is stored."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from conveyor.backends.base import Ack, Lease, worker_lost
from conveyor.backends.sqlite.core import (
    ACTIVE_SQL,
    BACK_OR_CANCELLED,
    COLUMNS,
    Settled,
    SQLiteCore,
    record,
    ts,
)
from conveyor.model import ErrorInfo, JobRecord, JobStatus
from conveyor.serde import dump_json

#: acks settled by one UPDATE (three parameters each, far below SQLite's 32,766)
_ACKS_PER_STATEMENT = 500


class TransitionVerbs(SQLiteCore):
    """enqueue, complete, fail, release, cancel, retry, recover, progress."""

    # -- transitions -----------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        rows = [
            (job, dump_json(job.args), dump_json(job.kwargs), dump_json(job.retry) if job.retry else None,
             dump_json(job.meta) if job.meta else None)
            for job in jobs
        ]

        def work(conn: sqlite3.Connection, now: float) -> list[JobRecord]:
            out: list[JobRecord] = []
            pos = self._next_pos(conn, len(rows))
            added: list[tuple[str, int, str, int]] = []
            for job, args, kwargs, retry, meta in rows:
                # an id stored already (a call sent again, or twice in one batch): that job,
                # unchanged, as every backend answers
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM conveyor_jobs WHERE id = ?", (job.id,)
                ).fetchone()
                if row is not None:
                    out.append(record(row))
                    continue
                if job.unique is not None:
                    row = conn.execute(
                        f"SELECT {COLUMNS} FROM conveyor_jobs WHERE queue = ? AND unique_key = ? "
                        f"AND status IN {ACTIVE_SQL}",
                        (job.queue, job.unique),
                    ).fetchone()
                    if row is not None:
                        out.append(record(row))
                        continue
                if job.supersede and job.key is not None:
                    # the WHERE repeats the lane index's own (status IN ACTIVE_SQL) so it may be used
                    gone = conn.execute(
                        "UPDATE conveyor_jobs INDEXED BY conveyor_jobs_lane SET status = 'cancelled', "
                        "finished_at = ?, last_event = last_event + 1 WHERE queue = ? AND key = ? "
                        f"AND status IN {ACTIVE_SQL} AND status IN ('queued', 'scheduled') "
                        "AND attempts = 0 "
                        "RETURNING id, last_event, status, attempts",
                        (now, job.queue, job.key),
                    ).fetchall()
                    self._append_status(conn, now, gone, reason="superseded")
                    self._handoff(conn, {(job.queue, job.key)})
                blocked = 0
                if job.key is not None:
                    blocked = int(conn.execute(
                        f"SELECT EXISTS (SELECT 1 FROM conveyor_jobs WHERE queue = ? AND key = ? "
                        f"AND status IN {ACTIVE_SQL})",
                        (job.queue, job.key),
                    ).fetchone()[0])
                run_at = ts(job.scheduled_for) or now
                status = JobStatus.SCHEDULED if run_at > now else JobStatus.QUEUED
                conn.execute(
                    "INSERT INTO conveyor_jobs (id, pos, task, queue, status, args, kwargs, priority, "
                    "key, unique_key, blocked, max_attempts, timeout, enqueued_at, scheduled_for, "
                    "run_at, retry, meta, last_event) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (job.id, pos, job.task, job.queue, status.value, args, kwargs, job.priority,
                     job.key, job.unique, blocked, job.max_attempts, job.timeout,
                     ts(job.enqueued_at), ts(job.scheduled_for), run_at, retry, meta),
                )
                pos += 1
                added.append((job.id, 1, status.value, 0))  # its first event, numbered as stored
                out.append(JobRecord(
                    id=job.id, task=job.task, queue=job.queue, status=status, args=job.args,
                    kwargs=job.kwargs, priority=job.priority, key=job.key, unique=job.unique,
                    max_attempts=job.max_attempts, timeout=job.timeout,
                    enqueued_at=job.enqueued_at, scheduled_for=job.scheduled_for, retry=job.retry,
                    meta=job.meta,
                ))
            self._append_status(conn, now, added)
            return out

        return await self._write(work)

    async def complete(self, acks: Sequence[Ack]) -> list[bool]:
        if not acks:
            return []
        payload = [(Lease(a.job_id, a.token), dump_json(a.result)) for a in acks]

        def one_by_one(conn: sqlite3.Connection, now: float) -> tuple[list[bool], list[Settled]]:
            # an id twice in one batch: in order, so the first ack that holds the lease wins
            out: list[bool] = []
            done: list[Settled] = []
            for lease, result in payload:
                hit = self._settle(
                    conn, now, lease,
                    "status = 'succeeded', finished_at = ?, result = ?, error = NULL",
                    (now, result),
                )
                out.append(hit is not None)
                if hit is not None:
                    done.append(hit)
            return out, done

        def work(conn: sqlite3.Connection, now: float) -> list[bool]:
            if len({lease.job_id for lease, _ in payload}) < len(payload):
                out, done = one_by_one(conn, now)
            else:
                out, done = all_at_once(conn, now)
            lanes = {(hit.queue, hit.key) for hit in done if hit.key is not None}
            self._append_status(conn, now, [h.event for h in done])
            self._handoff(conn, lanes)
            moves: Counter[tuple[str, str]] = Counter()
            for hit in done:
                moves[hit.queue, "running"] -= 1
                moves[hit.queue, "succeeded"] += 1
            self._count(conn, moves)
            return out

        def all_at_once(conn: sqlite3.Connection, now: float) -> tuple[list[bool], list[Settled]]:
            done: list[Settled] = []
            for start in range(0, len(payload), _ACKS_PER_STATEMENT):
                chunk = payload[start:start + _ACKS_PER_STATEMENT]
                values = ",".join(["(?, ?, ?)"] * len(chunk))
                # one fenced UPDATE for the whole chunk: a row changes only if its token holds
                done += map(Settled._make, conn.execute(
                    "UPDATE conveyor_jobs SET status = 'succeeded', finished_at = ?, "
                    "result = a.column3, error = NULL, lease_token = NULL, lease_expires_at = NULL, "
                    f"last_event = last_event + 1 FROM (VALUES {values}) AS a "
                    "WHERE conveyor_jobs.id = a.column1 AND conveyor_jobs.lease_token = a.column2 "
                    "AND conveyor_jobs.status = 'running' "
                    "RETURNING queue, key, id, last_event, status, attempts",
                    (now, *(v for lease, result in chunk for v in (lease.job_id, lease.token, result))),
                ).fetchall())
            settled = {hit.id for hit in done}
            return [lease.job_id in settled for lease, _ in payload], done

        return await self._write(work)

    async def fail(
        self, lease: Lease, error: ErrorInfo, *, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        err = dump_json(error)

        def work(conn: sqlite3.Connection, now: float) -> bool:
            if retry_at is None:
                status = JobStatus.DEAD if dead else JobStatus.FAILED
                hit = self._settle(
                    conn, now, lease, "status = ?, finished_at = ?, error = ?",
                    (status.value, now, err),
                )
            else:
                at = retry_at.timestamp()
                status = JobStatus.SCHEDULED if at > now else JobStatus.QUEUED
                # a job asked to cancel while its attempt failed is not tried again
                hit = self._settle(
                    conn, now, lease,
                    "status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE ? END, "
                    "finished_at = CASE WHEN cancel_requested = 1 THEN ? ELSE NULL END, "
                    "scheduled_for = ?, run_at = ?, error = ?, due = 0",
                    (status.value, now, at, max(at, now), err),
                )
            if hit is None:
                return False
            self._append_status(conn, now, [hit.event], error=error)
            if JobStatus(hit.status).terminal and hit.key is not None:
                self._handoff(conn, {(hit.queue, hit.key)})
            return True

        return await self._write(work)

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []

        def work(conn: sqlite3.Connection, now: float) -> list[bool]:
            out: list[bool] = []
            lanes: set[tuple[str, str]] = set()
            settled: list[Settled] = []
            for lease in leases:
                hit = self._settle(
                    conn, now, lease,
                    f"{BACK_OR_CANCELLED}, attempts = attempts - 1, worker = NULL, run_at = ?, "
                    "scheduled_for = NULL",
                    (now, now),
                )
                out.append(hit is not None)
                if hit is not None:
                    settled.append(hit)
                    if hit.status == "cancelled" and hit.key is not None:
                        lanes.add((hit.queue, hit.key))
            self._handoff(conn, lanes)
            self._append_status(conn, now, [h.event for h in settled], reason="released")
            return out

        return await self._write(work)

    async def cancel(
        self, job_id: str, *, lease: Lease | None = None, error: ErrorInfo | None = None
    ) -> JobRecord | None:
        def work(conn: sqlite3.Connection, now: float) -> JobRecord | None:
            if lease is not None:
                hit = self._settle(
                    conn, now, lease, "status = 'cancelled', finished_at = ?, error = ?",
                    (now, dump_json(error) if error else None),
                )
                if hit is not None:
                    self._append_status(conn, now, [hit.event])
                    if hit.key is not None:
                        self._handoff(conn, {(hit.queue, hit.key)})
            else:
                row = conn.execute(
                    "UPDATE conveyor_jobs SET status = 'cancelled', finished_at = ? WHERE id = ? "
                    "AND status IN ('queued', 'scheduled') RETURNING queue, key",
                    (now, job_id),
                ).fetchone()
                if row is not None:
                    self._status_events(conn, now, [job_id])
                    if row[1] is not None:
                        self._handoff(conn, {(row[0], row[1])})
                else:
                    conn.execute(
                        "UPDATE conveyor_jobs SET cancel_requested = 1 WHERE id = ? "
                        "AND status = 'running'",
                        (job_id,),
                    )
            found = conn.execute(
                f"SELECT {COLUMNS} FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if found is None else record(found)

        return await self._write(work)

    async def retry(self, job_id: str) -> JobRecord | None:
        def work(conn: sqlite3.Connection, now: float) -> JobRecord | None:
            row = conn.execute(
                "SELECT queue, key, unique_key, status FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return None
            queue, key, unique, status = row
            if status in ("failed", "dead", "cancelled"):
                if unique is not None and conn.execute(
                    f"SELECT 1 FROM conveyor_jobs WHERE queue = ? AND unique_key = ? "
                    f"AND status IN {ACTIVE_SQL}", (queue, unique),
                ).fetchone():
                    unique = None  # an active job holds the value now; this one gives it up
                blocked = key is not None and conn.execute(
                    f"SELECT EXISTS (SELECT 1 FROM conveyor_jobs WHERE queue = ? AND key = ? "
                    f"AND status IN {ACTIVE_SQL})", (queue, key),
                ).fetchone()[0]
                conn.execute(
                    "UPDATE conveyor_jobs SET status = 'queued', pos = ?, attempts = 0, lost = 0, due = 0, "
                    "blocked = ?, unique_key = ?, run_at = ?, scheduled_for = NULL, "
                    "started_at = NULL, finished_at = NULL, cancel_requested = 0, worker = NULL "
                    "WHERE id = ?",
                    (self._next_pos(conn, 1), int(blocked), unique, now, job_id),
                )
                self._status_events(conn, now, [job_id], reason="retried")
            found = conn.execute(
                f"SELECT {COLUMNS} FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return record(found)

        return await self._write(work)

    async def recover(self, max_lost: int | None = None) -> list[str]:
        error = worker_lost(max_lost or 0)
        limit = max_lost if max_lost is not None else 1 << 62

        def work(conn: sqlite3.Connection, now: float) -> list[str]:
            # given up: jobs whose workers died under them too often (not those asked to cancel)
            dead = conn.execute(
                "UPDATE conveyor_jobs SET status = 'dead', finished_at = ?, lost = lost + 1, "
                "error = ?, lease_token = NULL, lease_expires_at = NULL, "
                "last_event = last_event + 1 WHERE status = 'running' AND lease_expires_at < ? "
                "AND cancel_requested = 0 AND lost + 1 >= ? "
                "RETURNING id, last_event, status, attempts, queue, key",
                (now, dump_json(error), now, limit),
            ).fetchall()
            self._append_status(
                conn, now, [r[:4] for r in dead], error=error, reason="lease expired"
            )
            self._handoff(conn, {(r[4], r[5]) for r in dead if r[5] is not None})
            # a job someone asked to cancel is not put back: its cancel completes here
            rows = conn.execute(
                f"UPDATE conveyor_jobs SET {BACK_OR_CANCELLED}, lease_token = NULL, "
                "lease_expires_at = NULL, worker = NULL, run_at = ?, scheduled_for = NULL, "
                "lost = lost + 1 WHERE status = 'running' AND lease_expires_at < ? "
                "RETURNING id, status, queue, key",
                (now, now, now),
            ).fetchall()
            self._status_events(conn, now, [r[0] for r in rows], reason="lease expired")
            self._handoff(conn, {(r[2], r[3]) for r in rows if r[1] == "cancelled" and r[3] is not None})
            return [r[0] for r in dead] + [r[0] for r in rows]

        return await self._write(work)

    async def progress(self, lease: Lease, fraction: float, message: str) -> bool:
        text = dump_json({"fraction": fraction, "message": message})

        def work(conn: sqlite3.Connection, now: float) -> bool:
            # two short statements: the fenced update numbers the event, the insert appends it
            row = conn.execute(
                "UPDATE conveyor_jobs SET progress = ?, last_event = last_event + 1 WHERE id = ? "
                "AND lease_token = ? AND status = 'running' RETURNING last_event",
                (text, lease.job_id, lease.token),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT INTO conveyor_events VALUES (?, ?, 'progress', ?, ?)",
                (lease.job_id, row[0], now, text),
            )
            return True

        return await self._write(work)

