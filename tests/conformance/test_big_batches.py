"""Big batches on the backend contract: every batch verb takes 10,000 items in one call, whole.

A worker with high concurrency claims, acks, renews and releases thousands of leases at once, and
a chatty job reports thousands of progress events. These tests drive ``queue.backend`` directly,
playing the worker, and check that nothing is lost or half-done at these sizes (a Lua script
that fails part-way through would leave jobs running with no lease to recover them by).
"""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Queue
from conveyor.backends.base import Ack, Lease

N = 10_000

pytestmark = pytest.mark.timeout(90)


def _echo(queue: Queue) -> Any:
    @queue.task(name="echo")
    async def echo(x: int) -> int:
        return x

    return echo


async def _claim_all(queue: Queue, n: int) -> list[Any]:
    """Enqueue ``n`` jobs in one batch and claim them all in one call."""
    echo = _echo(queue)
    await queue.enqueue_many([echo.prepare(i) for i in range(n)])
    claimed = await queue.backend.claim([queue.name], "w1", n, 60.0)
    assert len(claimed) == n
    return claimed


async def test_ten_thousand_jobs_are_claimed_and_completed_in_one_call_each(queue: Queue) -> None:
    """A claim of 10,000 jobs leases them all, and one ack batch of 10,000 completes them all."""
    claimed = await _claim_all(queue, N)
    assert [r.args[0] for r in claimed] == list(range(N))  # enqueue order
    stats = await queue.stats()
    assert stats["running"] == N and stats["queued"] == 0, stats
    acks = [Ack(r.id, r.lease_token, r.args[0] * 2) for r in claimed]
    assert await queue.backend.complete(acks) == [True] * N
    stats = await queue.stats()
    assert stats["succeeded"] == N and stats["running"] == 0, stats
    assert (await queue.backend.get(claimed[-1].id)).result == 2 * (N - 1)  # type: ignore[union-attr]
    assert await queue.backend.recover() == []  # nothing left running without a lease


async def test_ten_thousand_leases_are_renewed_and_released_in_one_call_each(queue: Queue) -> None:
    """Renewing 10,000 leases holds them all; releasing them puts all 10,000 back, claimable."""
    claimed = await _claim_all(queue, N)
    leases = [Lease(r.id, r.lease_token) for r in claimed]
    renewed = await queue.backend.renew(leases, 60.0)
    assert renewed.lost == frozenset() and renewed.cancel_requested == frozenset()
    assert await queue.backend.release(leases) == [True] * N
    stats = await queue.stats()
    assert stats["queued"] == N and stats["running"] == 0, stats
    again = await queue.backend.claim([queue.name], "w2", N, 60.0)
    assert [r.args[0] for r in again] == list(range(N))  # each kept its place
    assert all(r.attempts == 1 for r in again)  # a release does not count an attempt


async def test_a_job_with_ten_thousand_progress_events_reads_back_whole(queue: Queue) -> None:
    """10,000 progress events of one job come back in order from events(), and result() works."""
    echo = _echo(queue)
    job = await echo.enqueue(7)
    (rec,) = await queue.backend.claim([queue.name], "w1", 1, 60.0)
    assert rec.lease_token is not None
    lease = Lease(rec.id, rec.lease_token)
    for i in range(N):
        assert await queue.backend.progress(lease, i / N, f"step {i}")
    assert await queue.backend.complete([Ack(rec.id, rec.lease_token, 7)]) == [True]
    progress = [e.data["message"] async for e in job.events() if e.type == "progress"]
    assert progress == [f"step {i}" for i in range(N)]
    assert len(await queue.backend.events(job.id)) >= N + 3  # queued, running, N, succeeded
    assert await job.result(timeout=10) == 7
