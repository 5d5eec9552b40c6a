"""Reads and housekeeping: get, list, stats, events, cancel requests, purge."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from conveyor.backends.base import JobFilter
from conveyor.backends.postgres.core import PostgresCore
from conveyor.backends.postgres.records import COLUMNS, record
from conveyor.model import Event, JobRecord, JobStatus

__all__ = ["AdminVerbs"]

#: jobs one purge transaction deletes at most: each batch is short, so it never holds
#: anything long (rows, locks, or a snapshot that keeps dead rows from being vacuumed)
PURGE_BATCH = 500
# list_jobs merges one (queue, status) index range per non-empty pair, up to this many
_MERGE_RANGES = 200


class AdminVerbs(PostgresCore):
    """purge, get, list_jobs, stats, events, cancel_requested."""

    async def purge(self, before: datetime) -> int:
        """Delete in batches of :data:`PURGE_BATCH` jobs, each its own short transaction."""
        total = 0
        while True:
            done = int(await self.db.fetchval(
                "purge", f"SELECT {self.s}.purge($1, $2)", before, PURGE_BATCH
            ))
            total += done
            if done < PURGE_BATCH:
                break
            await asyncio.sleep(0)  # let the worker's own calls in between
        while True:
            done = int(await self.db.fetchval(
                "purge", f"SELECT {self.s}.purge_lanes($1, $2)", before, PURGE_BATCH
            ))
            if done < PURGE_BATCH:
                return total
            await asyncio.sleep(0)

    # -- reads -----------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self.db.fetch(
            "get", f"SELECT {COLUMNS} FROM {self.s}.jobs WHERE id = $1", job_id
        )
        return record(rows[0]) if rows else None

    async def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        want = flt.limit + flt.offset
        if want <= 0:
            return []
        # the (queue, status) pairs that hold jobs, from the counts: a few rows
        which = ["TRUE"]
        args: list[Any] = []
        if flt.queue is not None:
            args.append(flt.queue)
            which.append(f"queue = ${len(args)}")
        if flt.status is not None:
            args.append(flt.status.value)
            which.append(f"status = ${len(args)}")
        pairs = await self.db.fetch(
            "list", f"SELECT queue, status FROM {self.s}.counts WHERE {' AND '.join(which)} "
            "GROUP BY queue, status HAVING sum(n) > 0 ORDER BY queue, status",
            *args,
        )
        if not pairs:
            return []
        task = flt.task
        if len(pairs) > _MERGE_RANGES:  # dozens of queues: one pass over the table instead
            conds, params = list(which), list(args)
            if task is not None:
                params.append(task)
                conds.append(f"task = ${len(params)}")
            params += [flt.limit, flt.offset]
            rows = await self.db.fetch(
                "list", f"SELECT {COLUMNS} FROM {self.s}.jobs WHERE {' AND '.join(conds)} "
                f"ORDER BY pos DESC LIMIT ${len(params) - 1} OFFSET ${len(params)}",
                *params,
            )
            return [record(r) for r in rows]
        # each pair's newest `want` from its own index range (already in order), merged
        arms: list[str] = []
        params = []
        for queue, status in pairs:
            params += [queue, status]
            cond = f"queue = ${len(params) - 1} AND status = ${len(params)}"
            cond += " AND status = 'running'" if status == "running" else " AND status <> 'running'"
            if task is not None:
                params.append(task)
                cond += f" AND task = ${len(params)}"
            arms.append(
                f"(SELECT {COLUMNS} FROM {self.s}.jobs WHERE {cond} ORDER BY pos DESC LIMIT {want})"
            )
        rows = await self.db.fetch(
            "list",
            f"SELECT * FROM ({' UNION ALL '.join(arms)}) AS m ORDER BY pos DESC "
            f"LIMIT {flt.limit} OFFSET {flt.offset}",
            *params,
        )
        return [record(r) for r in rows]

    async def stats(self, queue: str | None = None) -> dict[str, int]:
        counts = {status.value: 0 for status in JobStatus}
        if queue is None:
            rows = await self.db.fetch(
                "stats", f"SELECT status, sum(n) FROM {self.s}.counts GROUP BY status"
            )
        else:
            rows = await self.db.fetch(
                "stats",
                f"SELECT status, sum(n) FROM {self.s}.counts WHERE queue = $1 GROUP BY status",
                queue,
            )
        for status, n in rows:
            counts[status] = int(n)
        return counts

    async def events(self, job_id: str, after: int = 0) -> list[Event]:
        rows = await self.db.fetch(
            "events",
            f"SELECT seq, type, at, data FROM {self.s}.events WHERE job_id = $1 AND seq > $2 "
            "ORDER BY seq",
            job_id, after,
        )
        return [Event(job_id, seq, kind, at, json.loads(data)) for seq, kind, at, data in rows]

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        rows = await self.db.fetch(
            "cancel_requested",
            f"SELECT id FROM {self.s}.jobs WHERE id = ANY($1::text[]) AND cancel_requested",
            list(job_ids),
        )
        return {row[0] for row in rows}
