"""Reads and housekeeping: get, list, stats, events, cancel requests, purge."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from conveyor.backends.base import JobFilter
from conveyor.backends.sqlite.core import COLUMNS, SQLiteCore, record
from conveyor.model import Event, JobRecord, JobStatus, from_timestamp

# purge: batch sizes (jobs), the writer time each batch aims at and the pause between (seconds)
_PURGE_FIRST, _PURGE_MIN, _PURGE_MAX = 200, 20, 2000
_PURGE_HOLD, _PURGE_PAUSE = 0.01, 0.03
_PURGE = (
    "DELETE FROM conveyor_jobs WHERE id IN (SELECT id FROM conveyor_jobs "
    "INDEXED BY conveyor_jobs_finished WHERE finished_at < ? "
    "AND status IN ('succeeded', 'failed', 'dead', 'cancelled') ORDER BY finished_at LIMIT ?) "
    "RETURNING id"
)
# list_jobs merges one (queue, status) index range per non-empty pair, up to this many
_MERGE_RANGES = 200


class AdminVerbs(SQLiteCore):
    """purge, get, list_jobs, stats, events, cancel_requested."""

    async def purge(self, before: datetime) -> int:
        """Delete in small batches, each its own short transaction, so writers never wait long."""
        cutoff = before.timestamp()
        total, size = 0, _PURGE_FIRST

        def batch(conn: sqlite3.Connection, now: float) -> int:
            ids = [(r[0],) for r in conn.execute(_PURGE, (cutoff, size))]
            conn.executemany("DELETE FROM conveyor_events WHERE job_id = ?", ids)
            return len(ids)

        while True:
            # the whole transaction is timed, its commit too: with synchronous=full the fsync of
            # the pages a batch deleted is a good part of the time other writers wait
            started = time.perf_counter()
            done = await self._write(batch, notify=False)
            spent = time.perf_counter() - started
            total += done
            if done < size:
                return total
            # size the next batch to take about _PURGE_HOLD of the writer
            size = max(_PURGE_MIN, min(_PURGE_MAX, int(size * _PURGE_HOLD / max(spent, 1e-4))))
            # let the writers of other processes in: their busy handler looks again only every
            # 25 ms or so once it has waited a while, so a purge that took the lock straight back
            # would starve them as surely as one long transaction
            await asyncio.sleep(_PURGE_PAUSE)

    # -- reads -----------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        def work(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if row is None else record(row)

        return await self._read(work)

    async def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        task = " AND task = ?" if flt.task is not None else ""
        tasks = (flt.task,) if flt.task is not None else ()
        # one (queue, status) range of the list index, newest first: the merge reads no further;
        # running jobs (as many as workers' slots at most) come from their own index
        arms = {
            False: f"SELECT * FROM (SELECT {COLUMNS}, pos FROM conveyor_jobs INDEXED BY conveyor_jobs_list "
            f"WHERE queue = ? AND status = ? AND status != 'running'{task} ORDER BY pos DESC LIMIT ?)",
            True: f"SELECT * FROM (SELECT {COLUMNS}, pos FROM conveyor_jobs INDEXED BY conveyor_jobs_running "
            f"WHERE queue = ? AND status = ? AND status = 'running'{task} ORDER BY pos DESC LIMIT ?)",
        }
        which = ["n > 0"]
        which_args: list[object] = []
        if flt.queue is not None:
            which.append("queue = ?")
            which_args.append(flt.queue)
        if flt.status is not None:
            which.append("status = ?")
            which_args.append(flt.status.value)
        ranges_sql = f"SELECT queue, status FROM conveyor_counts WHERE {' AND '.join(which)}"

        def work(conn: sqlite3.Connection) -> list[JobRecord]:
            conn.execute("BEGIN")  # the ranges and their rows from one snapshot
            try:
                ranges = conn.execute(ranges_sql, which_args).fetchall()
                want = flt.limit + flt.offset
                rows: list[tuple[Any, ...]] = []
                # many ranges (many queues): merged a group at a time, each group by its indexes,
                # and the groups' pages merged here (pos is each row's last column)
                for start in range(0, len(ranges), _MERGE_RANGES):
                    group = ranges[start:start + _MERGE_RANGES]
                    merged = " UNION ALL ".join(arms[status == "running"] for _, status in group)
                    args: list[object] = []
                    for queue, status in group:
                        args += [queue, status, *tasks, want]
                    rows += conn.execute(f"{merged} ORDER BY pos DESC LIMIT ?", (*args, want))
                if len(ranges) > _MERGE_RANGES:
                    rows.sort(key=lambda r: r[-1], reverse=True)
                rows = rows[flt.offset:want]
            finally:
                conn.execute("COMMIT")
            return [record(r) for r in rows]

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

