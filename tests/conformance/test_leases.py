"""Leases, recovery of expired leases, fencing by lease token, and release, on the backend contract.

These tests drive ``queue.backend`` directly, playing the worker: that is how a crashed worker
(a lease nobody renews) and a late worker (a token that is no longer current) are simulated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor import Context, Queue
from conveyor.backends.base import Ack, Lease
from conveyor.model import ErrorInfo

from .helpers import RESULT_TIMEOUT, Gate

WaitUntil = Callable[..., Awaitable[Any]]

ERROR: ErrorInfo = {"type": "RuntimeError", "message": "late worker", "traceback": "..."}


@pytest.fixture
async def job_id(queue: Queue) -> str:
    """One queued job of a task ``echo(x: int) -> int`` (opens the queue)."""

    @queue.task(name="echo")
    async def echo(x: int) -> int:
        return x

    return (await echo.enqueue(1)).id


def _token(record: Any) -> str:
    assert record.lease_token is not None
    return str(record.lease_token)


async def _claim(queue: Queue, worker: str, lease: float) -> Any:
    claimed = await queue.backend.claim([queue.name], worker, 10, lease)
    assert len(claimed) == 1, claimed
    return claimed[0]


async def _expire_and_recover(queue: Queue, job_id: str, wait_until: WaitUntil) -> None:
    async def recovered() -> bool:
        return job_id in await queue.backend.recover()

    await wait_until(recovered, timeout=5, message="expired lease recovered")


async def test_claim_takes_a_lease(queue: Queue, job_id: str) -> None:
    """A claim makes the job running with a token, an expiry lease seconds ahead, and attempt 1."""
    before = datetime.now(UTC)
    rec = await _claim(queue, "w1", lease=0.2)
    after = datetime.now(UTC)
    assert rec.id == job_id
    assert rec.status == "running"
    assert rec.attempts == 1
    assert rec.lease_token
    assert rec.lease_expires_at is not None
    slack = timedelta(milliseconds=5)
    assert before + timedelta(seconds=0.2) - slack <= rec.lease_expires_at
    assert rec.lease_expires_at <= after + timedelta(seconds=0.2) + slack
    assert rec.started_at is not None
    stored = await queue.backend.get(job_id)
    assert stored is not None and stored.status == "running" and stored.worker == "w1"
    assert await queue.backend.claim([queue.name], "w2", 10, 0.2) == []


async def test_unexpired_lease_is_not_recovered(queue: Queue, job_id: str) -> None:
    """``recover()`` leaves a job whose lease is still valid alone."""
    await _claim(queue, "w1", lease=30)
    assert await queue.backend.recover() == []
    assert (await queue.backend.get(job_id)).status == "running"  # type: ignore[union-attr]


async def test_expired_lease_is_recovered_to_queued(
    queue: Queue, job_id: str, wait_until: WaitUntil
) -> None:
    """After the lease expires, ``recover()`` puts the job back as queued, claimable again."""
    first = await _claim(queue, "w1", lease=0.2)
    await _expire_and_recover(queue, job_id, wait_until)
    stored = await queue.backend.get(job_id)
    assert stored is not None
    assert stored.status == "queued"
    assert stored.lease_token is None
    assert await queue.backend.recover() == []  # once only

    second = await _claim(queue, "w2", lease=5)
    assert second.id == job_id
    assert second.lease_token != first.lease_token


async def test_old_token_is_fenced_out_after_recovery(
    queue: Queue, job_id: str, wait_until: WaitUntil
) -> None:
    """After recovery and a re-claim, acks with the old token return False and change nothing."""
    backend = queue.backend
    old = await _claim(queue, "w1", lease=0.2)
    await _expire_and_recover(queue, job_id, wait_until)
    new = await _claim(queue, "w2", lease=30)
    old_lease = Lease(job_id, old.lease_token)
    snapshot = await backend.get(job_id)
    events_before = await backend.events(job_id)

    assert await backend.complete([Ack(job_id, old.lease_token, 99)]) == [False]
    assert await backend.fail(old_lease, ERROR, retry_at=None) is False
    assert await backend.fail(old_lease, ERROR, retry_at=None, dead=True) is False
    assert await backend.fail(
        old_lease, ERROR, retry_at=datetime.now(UTC) + timedelta(seconds=1)
    ) is False
    assert await backend.progress(old_lease, 0.5, "stale") is False
    assert await backend.release([old_lease]) == [False]
    renewed = await backend.renew([old_lease], 30)
    assert job_id in renewed.lost
    await backend.cancel(job_id, lease=old_lease, error=ERROR)

    after = await backend.get(job_id)
    assert after == snapshot
    assert after is not None
    assert (after.status, after.lease_token, after.worker) == ("running", new.lease_token, "w2")
    assert (after.result, after.error, after.progress) == (None, None, None)
    assert await backend.events(job_id) == events_before

    # the current holder is unaffected
    assert await backend.complete([Ack(job_id, new.lease_token, 1)]) == [True]
    done = await backend.get(job_id)
    assert done is not None and (done.status, done.result) == ("succeeded", 1)


async def test_old_token_is_fenced_out_while_the_job_waits(
    queue: Queue, job_id: str, wait_until: WaitUntil
) -> None:
    """Between recovery and the next claim, acks with the old token change nothing either."""
    backend = queue.backend
    old = await _claim(queue, "w1", lease=0.2)
    await _expire_and_recover(queue, job_id, wait_until)
    assert await backend.complete([Ack(job_id, old.lease_token, 99)]) == [False]
    assert await backend.fail(Lease(job_id, old.lease_token), ERROR, retry_at=None) is False
    stored = await backend.get(job_id)
    assert stored is not None
    assert (stored.status, stored.result, stored.error) == ("queued", None, None)


async def test_made_up_token_is_fenced_out(queue: Queue, job_id: str) -> None:
    """An ack with a token that was never issued returns False while the real lease is held."""
    held = await _claim(queue, "w1", lease=30)
    assert await queue.backend.complete([Ack(job_id, "not-a-token", 1)]) == [False]
    assert await queue.backend.progress(Lease(job_id, "not-a-token"), 0.1, "x") is False
    stored = await queue.backend.get(job_id)
    assert stored is not None and stored.status == "running"
    assert stored.lease_token == held.lease_token


async def test_complete_acks_are_judged_one_by_one(queue: Queue) -> None:
    """``complete`` takes a batch and answers per ack: current tokens win, stale ones do not."""

    @queue.task(name="echo")
    async def echo(x: int) -> int:
        return x

    ids = [(await echo.enqueue(i)).id for i in range(3)]
    claimed = await queue.backend.claim([queue.name], "w1", 10, 30)
    assert [r.id for r in claimed] == ids
    acks = [
        Ack(claimed[0].id, _token(claimed[0]), 0),
        Ack(claimed[1].id, "stale", 1),
        Ack(claimed[2].id, _token(claimed[2]), 2),
    ]
    assert await queue.backend.complete(acks) == [True, False, True]
    statuses = [(await queue.backend.get(i)).status for i in ids]  # type: ignore[union-attr]
    assert statuses == ["succeeded", "running", "succeeded"]


async def test_release_puts_the_job_back_without_counting_the_attempt(
    queue: Queue, job_id: str
) -> None:
    """``release`` makes a running job queued again with the attempt not counted."""
    held = await _claim(queue, "w1", lease=30)
    assert held.attempts == 1
    assert await queue.backend.release([Lease(job_id, held.lease_token)]) == [True]
    stored = await queue.backend.get(job_id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.lease_token) == ("queued", 0, None)
    again = await _claim(queue, "w2", lease=30)
    assert again.attempts == 1
    # the released token is dead
    assert await queue.backend.complete([Ack(job_id, held.lease_token, 1)]) == [False]


async def test_renew_extends_the_lease(queue: Queue, job_id: str) -> None:
    """``renew`` moves the expiry to now + lease and reports nothing lost."""
    held = await _claim(queue, "w1", lease=0.2)
    result = await queue.backend.renew([Lease(job_id, held.lease_token)], 30)
    assert result.lost == frozenset()
    assert result.cancel_requested == frozenset()
    stored = await queue.backend.get(job_id)
    assert stored is not None and stored.lease_expires_at is not None
    assert stored.lease_expires_at >= datetime.now(UTC) + timedelta(seconds=29)
    assert await queue.backend.recover() == []


async def test_cancel_of_a_running_job_is_a_request_until_the_worker_confirms(
    queue: Queue, job_id: str
) -> None:
    """Cancel without a token flags a running job; renew reports it; with the token it ends."""
    held = await _claim(queue, "w1", lease=30)
    lease = Lease(job_id, held.lease_token)
    record = await queue.backend.cancel(job_id)
    assert record is not None and record.status == "running" and record.cancel_requested
    assert await queue.backend.cancel_requested([job_id]) == {job_id}
    assert job_id in (await queue.backend.renew([lease], 30)).cancel_requested
    final = await queue.backend.cancel(job_id, lease=lease)
    assert final is not None and final.status == "cancelled"
    assert await queue.backend.cancel("no-such-job") is None


async def test_fail_transitions(queue: Queue) -> None:
    """``fail`` with retry_at schedules the job, with dead=True ends it dead, else failed."""

    @queue.task(name="echo")
    async def echo(x: int) -> int:
        return x

    ids = [(await echo.enqueue(i)).id for i in range(3)]
    claimed = {r.id: r for r in await queue.backend.claim([queue.name], "w1", 10, 30)}
    later = datetime.now(UTC) + timedelta(hours=1)
    leases = [Lease(i, _token(claimed[i])) for i in ids]
    assert await queue.backend.fail(leases[0], ERROR, retry_at=later)
    assert await queue.backend.fail(leases[1], ERROR, retry_at=None)
    assert await queue.backend.fail(leases[2], ERROR, retry_at=None, dead=True)
    rec = [await queue.backend.get(i) for i in ids]
    assert [r.status for r in rec] == ["scheduled", "failed", "dead"]  # type: ignore[union-attr]
    assert all(r.error == ERROR for r in rec)  # type: ignore[union-attr]
    assert abs(rec[0].scheduled_for - later) < timedelta(milliseconds=2)  # type: ignore[union-attr,operator]
    assert await queue.backend.claim([queue.name], "w1", 10, 30) == []  # not due for an hour


async def test_worker_recovers_a_job_whose_worker_vanished(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """A job claimed by a worker that never comes back is recovered and run by a live worker."""
    runs: list[int] = []

    @queue.task(name="echo")
    async def echo(x: int, ctx: Context) -> int:
        runs.append(ctx.attempt)
        return x

    job = await echo.enqueue(5)
    ghost = await _claim(queue, "ghost", lease=0.2)  # the ghost worker never renews nor acks
    await wait_until(
        lambda: datetime.now(UTC) > ghost.lease_expires_at, message="ghost's lease expired"
    )
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == 5
    assert len(runs) == 1


async def test_worker_renews_the_lease_of_a_long_job(queue: Queue, wait_until: WaitUntil) -> None:
    """A job running past its lease keeps it (renewed), is never recovered, and runs once."""
    gate = Gate()
    runs: list[int] = []

    @queue.task(name="long")
    async def long_job() -> str:
        runs.append(1)
        await gate.wait()
        return "done"

    job = await long_job.enqueue()
    async with queue.worker(concurrency=1, lease=1):
        await wait_until(lambda: gate.entered == 1, message="job started")
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.6
        while loop.time() < end:  # outlive the 1 s lease by more than half again
            assert await queue.backend.recover() == []
            await asyncio.sleep(0.05)
        gate.open()
        assert await job.result(timeout=RESULT_TIMEOUT) == "done"
    assert runs == [1]


async def test_cancel_requested_before_a_crash_ends_cancelled_not_rerun(
    queue: Queue, job_id: str, wait_until: WaitUntil
) -> None:
    """A running job asked to cancel whose worker then dies ends cancelled at recovery, not queued."""
    await _claim(queue, "w1", lease=0.2)
    record = await queue.backend.cancel(job_id)
    assert record is not None and record.status == "running" and record.cancel_requested
    await _expire_and_recover(queue, job_id, wait_until)
    after = await queue.backend.get(job_id)
    assert after is not None and after.status == "cancelled"
    assert await queue.backend.claim([queue.name], "w2", 10, 5.0) == []


async def test_release_of_a_job_asked_to_cancel_ends_cancelled(queue: Queue, job_id: str) -> None:
    """Releasing (shutdown) a job someone asked to cancel completes the cancel instead."""
    rec = await _claim(queue, "w1", lease=5.0)
    await queue.backend.cancel(job_id)
    assert await queue.backend.release([Lease(job_id, _token(rec))]) == [True]
    after = await queue.backend.get(job_id)
    assert after is not None and after.status == "cancelled"
    assert await queue.backend.claim([queue.name], "w2", 10, 5.0) == []


async def test_a_job_whose_lease_expires_max_lost_times_is_dead_not_requeued(
    queue: Queue, job_id: str, wait_until: WaitUntil
) -> None:
    """A job that keeps losing its worker ends dead with WorkerLost after max_lost expiries."""

    async def expire_once() -> list[str]:
        await _claim(queue, "w", lease=0.2)

        async def recovered() -> list[str]:
            return await queue.backend.recover(2)

        result: list[str] = await wait_until(recovered, timeout=5, message="lease recovered")
        return result

    assert await expire_once() == [job_id]
    assert (await queue.backend.get(job_id)).status == "queued"  # type: ignore[union-attr]
    assert await expire_once() == [job_id]
    record = await queue.backend.get(job_id)
    assert record is not None and record.status == "dead"
    assert record.error is not None and record.error["type"] == "WorkerLost"
    events = await queue.backend.events(job_id)
    assert events[-1].data["status"] == "dead"
    assert await queue.backend.claim([queue.name], "w", 10, 5.0) == []
    # retried by hand, it starts over with a fresh count
    await queue.backend.retry(job_id)
    assert await expire_once() == [job_id]
    assert (await queue.backend.get(job_id)).status == "queued"  # type: ignore[union-attr]


async def test_a_cancel_requested_during_a_failing_attempt_is_not_retried(
    queue: Queue, job_id: str
) -> None:
    """A failed attempt of a job asked to cancel ends cancelled instead of waiting for a retry."""
    rec = await _claim(queue, "w1", lease=5.0)
    await queue.backend.cancel(job_id)
    retry_at = datetime.now(UTC) + timedelta(seconds=0.01)
    assert await queue.backend.fail(Lease(job_id, _token(rec)), ERROR, retry_at=retry_at) is True
    after = await queue.backend.get(job_id)
    assert after is not None and after.status == "cancelled"
    assert await queue.backend.claim([queue.name], "w2", 10, 5.0) == []
