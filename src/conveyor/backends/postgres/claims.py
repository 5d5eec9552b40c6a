"""Claiming: take due jobs in order with a lease, renew leases, and wait for work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from conveyor.backends.base import Lease, RenewResult, malformed_job
from conveyor.backends.postgres.core import PostgresCore
from conveyor.backends.postgres.records import COLUMNS, record
from conveyor.errors import BackendError
from conveyor.model import JobRecord

__all__ = ["ClaimVerbs"]


class ClaimVerbs(PostgresCore):
    """claim, renew, wait_for_jobs."""

    async def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[JobRecord]:
        if limit <= 0 or not queues:
            return []
        self._claim_mark = self._wake.count
        rows = await self.db.fetch(
            "claim", f"SELECT {COLUMNS} FROM {self.s}.claim($1, $2, $3, $4)",
            list(queues), worker, limit, float(lease),
        )
        out: list[JobRecord] = []
        for row in rows:
            try:
                out.append(record(row))
            except (ValueError, TypeError, KeyError) as exc:
                # its lease is ours: failing it now keeps it from blocking or spinning a worker
                await self._quarantine(row[0], row[22], exc)
        return out

    async def _quarantine(self, job_id: str, token: str, exc: Exception) -> None:
        """Fail a claimed job that cannot be decoded (a foreign writer), so it never spins."""
        error = malformed_job(exc)
        with contextlib.suppress(BackendError):
            await self.fail(Lease(job_id, token), error, retry_at=None)

    async def renew(self, leases: Sequence[Lease], lease: float) -> RenewResult:
        if not leases:
            return RenewResult(frozenset(), frozenset())
        # one statement: a HOT update of lease_expires_at, which no index holds
        rows = await self.db.fetch(
            "renew",
            f"UPDATE {self.s}.jobs j SET lease_expires_at = clock_timestamp() "
            "+ make_interval(secs => $3) FROM unnest($1::text[], $2::text[]) AS a(id, token) "
            "WHERE j.id = a.id AND j.lease_token = a.token AND j.status = 'running' "
            "RETURNING j.id, j.cancel_requested",
            [held.job_id for held in leases], [held.token for held in leases], float(lease),
        )
        held = {row["id"] for row in rows}
        cancel = frozenset(row["id"] for row in rows if row["cancel_requested"])
        return RenewResult(frozenset(h.job_id for h in leases) - held, cancel)

    async def wait_for_jobs(
        self, queues: Sequence[str], timeout: float, worker: str | None = None
    ) -> None:
        """Wait for a NOTIFY on the wake channel, the next due job, or the poll interval."""
        if self._wake.count != self._claim_mark:
            return  # woken while the last claim ran: look again
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        due = await self.db.fetchval("next_due", f"SELECT {self.s}.next_due($1)", list(queues))
        wait = deadline - loop.time()
        if due is not None:
            wait = min(wait, max(0.0, float(due)))
        if not self.pushing:
            wait = min(wait, self.options.poll)
        if self._wake.count != self._claim_mark:
            return
        await self._wake.wait_and_clear(max(0.0, wait))
