"""Claiming: take due jobs in order with a lease, renew leases, and wait for work."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence

from conveyor.backends.base import Lease, RenewResult, malformed_job
from conveyor.backends.sqlite.core import COLUMNS, SQLiteCore, record
from conveyor.model import JobRecord
from conveyor.serde import dump_json

#: scheduled jobs moved into the claim index per queue and claim, at most (soonest first)
PROMOTE_BATCH = 1000

# the WHERE of the partial index conveyor_jobs_ready, written as it is there so SQLite uses it
READY = "blocked = 0 AND (status = 'queued' OR (status = 'scheduled' AND due = 1))"
_DUE = "status = 'scheduled' AND blocked = 0 AND due = 0"

_PROMOTE = (
    "UPDATE conveyor_jobs SET due = 1 WHERE id IN (SELECT id FROM conveyor_jobs "
    f"INDEXED BY conveyor_jobs_due WHERE queue = ? AND {_DUE} AND run_at <= ? "
    "ORDER BY run_at LIMIT ?)"
)
_NEXT_DUE = (
    f"SELECT MIN(run_at) FROM conveyor_jobs INDEXED BY conveyor_jobs_due WHERE queue = ? AND {_DUE}"
)


def _take_sql(queues: int) -> str:
    """Select the best ready jobs of ``queues`` queues and take them, in one statement.

    Each queue's best come from its own range of the claim index (already in order); with
    several queues those few are merged, so nothing reads past ``limit`` jobs per queue.
    """
    best = (
        "SELECT {} FROM conveyor_jobs INDEXED BY conveyor_jobs_ready "
        f"WHERE queue = ? AND {READY} ORDER BY priority DESC, pos LIMIT ?"
    )
    if queues == 1:
        pick = best.format("id")
    else:
        best = best.format("id, priority, pos")
        merged = " UNION ALL ".join([f"SELECT * FROM ({best})"] * queues)
        pick = f"SELECT id FROM ({merged}) ORDER BY priority DESC, pos LIMIT ?"
    # the lease token is drawn by SQLite itself. `due` is left as it is, so it still says which
    # jobs were scheduled (1) rather than queued, for the counts; whatever puts the job back as
    # queued or scheduled later sets it to 0.
    return (
        "UPDATE conveyor_jobs SET status = 'running', attempts = attempts + 1, "
        "started_at = ?, finished_at = NULL, worker = ?, cancel_requested = 0, "
        "lease_token = lower(hex(randomblob(8))), lease_expires_at = ?, "
        f"last_event = last_event + 1 WHERE id IN ({pick}) "
        f"RETURNING {COLUMNS}, due, last_event, priority, pos"
    )


class ClaimVerbs(SQLiteCore):
    """claim, renew, wait_for_jobs."""

    async def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[JobRecord]:
        if limit <= 0 or not queues:
            return []
        self._claim_mark = self._changes.count
        take = _take_sql(len(queues))
        picks = [p for queue in queues for p in (queue, limit)]
        if len(queues) > 1:
            picks.append(limit)

        def work(conn: sqlite3.Connection, now: float) -> list[JobRecord]:
            for queue in queues:
                conn.execute(_PROMOTE, (queue, now, PROMOTE_BATCH))
            rows = conn.execute(take, (now, worker, now + lease, *picks)).fetchall()
            if not rows:
                return []
            rows.sort(key=lambda r: (-r[-2], r[-1]))
            moves: Counter[tuple[str, str]] = Counter()
            for row in rows:
                moves[row[2], "scheduled" if row[-4] else "queued"] -= 1
                moves[row[2], "running"] += 1
            self._count(conn, moves)
            self._append_status(
                conn, now, [(r[0], r[-3], "running", r[9]) for r in rows], worker=worker
            )
            out: list[JobRecord] = []
            for row in rows:
                try:
                    out.append(record(row))
                except (ValueError, TypeError, KeyError) as exc:
                    self._quarantine(conn, now, row[0], exc)
            return out

        return await self._write(work)

    @classmethod
    def _quarantine(cls, conn: sqlite3.Connection, now: float, job_id: str, exc: Exception) -> None:
        """Fail a stored job that cannot be read back, so it never blocks or spins a worker."""
        error = malformed_job(exc)
        row = conn.execute(
            "UPDATE conveyor_jobs SET status = 'failed', finished_at = ?, error = ?, "
            "lease_token = NULL, lease_expires_at = NULL WHERE id = ? RETURNING queue, key",
            (now, dump_json(error), job_id),
        ).fetchone()
        cls._status_events(conn, now, [job_id], error=error)
        if row is not None and row[1] is not None:
            cls._handoff(conn, {(row[0], row[1])})

    async def renew(self, leases: Sequence[Lease], lease: float) -> RenewResult:
        if not leases:
            return RenewResult(frozenset(), frozenset())

        def work(conn: sqlite3.Connection, now: float) -> RenewResult:
            held: set[str] = set()
            cancel: set[str] = set()
            for item in leases:
                row = conn.execute(
                    "UPDATE conveyor_jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? "
                    "AND status = 'running' RETURNING cancel_requested",
                    (now + lease, item.job_id, item.token),
                ).fetchone()
                if row is not None:
                    held.add(item.job_id)
                    if row[0]:
                        cancel.add(item.job_id)
            lost = frozenset(item.job_id for item in leases) - held
            return RenewResult(lost, frozenset(cancel))

        return await self._write(work)

    async def _next_due(self, queues: Sequence[str]) -> float | None:
        def work(conn: sqlite3.Connection) -> float | None:
            # one MIN per queue: each is a single seek at the start of its index range
            found = [conn.execute(_NEXT_DUE, (queue,)).fetchone()[0] for queue in queues]
            return min((at for at in found if at is not None), default=None)

        return await self._read(work)

    async def wait_for_jobs(
        self, queues: Sequence[str], timeout: float, worker: str | None = None
    ) -> None:
        seen = self._claim_mark
        if self._changes.count != seen:
            return  # something changed while the last claim ran: look again
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        due = await self._next_due(queues)
        if due is not None:
            deadline = min(deadline, loop.time() + max(0.0, due - time.time()))
        await self._changes.wait(seen, max(0.0, deadline - loop.time()))

