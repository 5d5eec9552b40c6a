"""Reads and housekeeping: get, list, stats, events, cancel requests, purge."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from conveyor.backends.base import JobFilter
from conveyor.backends.sqlite.core import COLUMNS, SQLiteCore, record
from conveyor.model import Event, JobRecord, JobStatus, from_timestamp

# list_jobs over every queue merges one index range per queue, for up to this many queues
_MERGE_QUEUES = 64


class AdminVerbs(SQLiteCore):
    """purge, get, list_jobs, stats, events, cancel_requested."""

    async def purge(self, before: datetime) -> int:
        cutoff = before.timestamp()

        def work(conn: sqlite3.Connection, now: float) -> int:
            ids = [r[0] for r in conn.execute(
                "DELETE FROM conveyor_jobs WHERE status IN ('succeeded', 'failed', 'dead', "
                "'cancelled') AND finished_at < ? RETURNING id", (cutoff,),
            )]
            conn.executemany("DELETE FROM conveyor_events WHERE job_id = ?", [(i,) for i in ids])
            return len(ids)

        return await self._write(work)

    # -- reads -----------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        def work(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if row is None else record(row)

        return await self._read(work)

    async def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        where: list[str] = []
        params: list[object] = []
        if flt.status is not None:
            where.append("status = ?")
            params.append(flt.status.value)
        if flt.task is not None:
            where.append("task = ?")
            params.append(flt.task)

        def one_queue(limit: str) -> str:
            # reads the (queue, status, pos) or (queue, pos) index backwards, from the newest
            cond = " AND ".join(["queue = ?", *where])
            return f"SELECT {COLUMNS}, pos FROM conveyor_jobs WHERE {cond} ORDER BY pos DESC {limit}"

        def work(conn: sqlite3.Connection) -> list[JobRecord]:
            if flt.queue is not None:
                sql = one_queue("LIMIT ? OFFSET ?")
                return [record(r) for r in conn.execute(
                    sql, (flt.queue, *params, flt.limit, flt.offset)
                )]
            # every queue: the newest of each queue, merged (no index orders all queues by status)
            queues = [r[0] for r in conn.execute(
                "SELECT DISTINCT queue FROM conveyor_counts WHERE n > 0 ORDER BY queue"
            )]
            if not queues:
                return []
            if len(queues) > _MERGE_QUEUES:  # too many to merge: one query over the whole table
                cond = " AND ".join(["1 = 1", *where])
                sql = (f"SELECT {COLUMNS} FROM conveyor_jobs WHERE {cond} "
                       "ORDER BY pos DESC LIMIT ? OFFSET ?")
                return [record(r) for r in conn.execute(sql, (*params, flt.limit, flt.offset))]
            arm = f"SELECT * FROM ({one_queue('LIMIT ?')})"
            sql = " UNION ALL ".join([arm] * len(queues)) + " ORDER BY pos DESC LIMIT ? OFFSET ?"
            args: list[object] = []
            for queue in queues:
                args += [queue, *params, flt.limit + flt.offset]
            return [record(r) for r in conn.execute(sql, (*args, flt.limit, flt.offset))]

        return await self._read(work)

    async def stats(self, queue: str | None = None) -> dict[str, int]:
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            # the counts the triggers keep: a handful of rows, however many jobs are stored
            counts = {status.value: 0 for status in JobStatus}
            if queue is None:
                rows = conn.execute("SELECT status, SUM(n) FROM conveyor_counts GROUP BY status")
            else:
                rows = conn.execute(
                    "SELECT status, n FROM conveyor_counts WHERE queue = ?", (queue,)
                )
            for status, count in rows:
                counts[status] = count
            return counts

        return await self._read(work)

    async def events(self, job_id: str, after: int = 0) -> list[Event]:
        def work(conn: sqlite3.Connection) -> list[Event]:
            return [
                Event(job_id, seq, type_, from_timestamp(at), json.loads(data))  # type: ignore[arg-type]
                for seq, type_, at, data in conn.execute(
                    "SELECT seq, type, at, data FROM conveyor_events WHERE job_id = ? AND seq > ? "
                    "ORDER BY seq", (job_id, after),
                )
            ]

        return await self._read(work)

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        ids = tuple(job_ids)
        marks = ",".join("?" * len(ids))

        def work(conn: sqlite3.Connection) -> set[str]:
            return {r[0] for r in conn.execute(
                f"SELECT id FROM conveyor_jobs WHERE id IN ({marks}) AND cancel_requested = 1", ids
            )}

        return await self._read(work)

