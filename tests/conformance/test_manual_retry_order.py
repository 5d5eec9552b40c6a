"""A job retried by hand goes to the back of its queue, behind every job enqueued since."""

from __future__ import annotations

from conveyor import Queue
from conveyor.backends.base import Lease


async def _claim_order(queue: Queue, count: int) -> list[str]:
    """Claim ``count`` jobs one at a time; their ids in claim order."""
    await queue.open()
    order: list[str] = []
    for _ in range(count):
        (record,) = await queue.backend.claim([queue.name], "w1", 1, 30.0)
        order.append(record.id)
    return order


async def test_a_cancelled_job_retried_by_hand_runs_after_jobs_enqueued_since(queue: Queue) -> None:
    """Cancel a waiting job, enqueue two more, retry it: it is claimed last."""

    @queue.task
    async def noop(n: int) -> None: ...

    first = await noop.enqueue(1)
    await first.cancel()
    later = [await noop.enqueue(2), await noop.enqueue(3)]
    await first.retry()
    assert await _claim_order(queue, 3) == [later[0].id, later[1].id, first.id]


async def test_a_failed_job_retried_by_hand_runs_after_jobs_enqueued_since(queue: Queue) -> None:
    """A failed job retried by hand is claimed after the jobs enqueued while it ran."""

    @queue.task
    async def noop(n: int) -> None: ...

    first = await noop.enqueue(1)
    await queue.open()
    (claimed,) = await queue.backend.claim([queue.name], "w1", 1, 30.0)
    later = [await noop.enqueue(2), await noop.enqueue(3)]
    failure = {"type": "ValueError", "message": "no", "traceback": ""}
    assert await queue.backend.fail(Lease(claimed.id, claimed.lease_token or ""), failure, retry_at=None)
    await first.retry()
    assert await _claim_order(queue, 3) == [later[0].id, later[1].id, first.id]
