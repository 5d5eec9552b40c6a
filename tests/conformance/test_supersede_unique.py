"""``supersede=True`` drops waiting jobs of a key; ``unique=`` returns the active job instead."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Queue, Retry
from conveyor.errors import JobCancelled, JobFailed

from .helpers import RESULT_TIMEOUT, Gate, stored_jobs, total_jobs

WaitUntil = Callable[..., Awaitable[Any]]


async def test_supersede_cancels_queued_jobs_of_the_same_key(queue: Queue) -> None:
    """A superseding job cancels the waiting jobs of its key, leaves other keys, and then runs."""
    ran: list[str] = []

    @queue.task(key="doc:{doc}")
    async def render(doc: str, version: str) -> str:
        ran.append(version)
        return version

    old1 = await render.enqueue("a", "v1")
    old2 = await render.options(delay=30).enqueue("a", "v2")  # scheduled counts as waiting too
    other = await render.enqueue("b", "b1")
    newest = await render.options(supersede=True).enqueue("a", "v3")

    assert await old1.status() == "cancelled"
    assert await old2.status() == "cancelled"
    assert await other.status() == "queued"
    assert await newest.status() == "queued"

    async with queue.worker(concurrency=4):
        assert await newest.result(timeout=RESULT_TIMEOUT) == "v3"
        assert await other.result(timeout=RESULT_TIMEOUT) == "b1"
    with pytest.raises(JobCancelled):
        await old1.result(timeout=RESULT_TIMEOUT)
    assert sorted(ran) == ["b1", "v3"]


async def test_supersede_spares_the_running_job(queue: Queue, wait_until: WaitUntil) -> None:
    """Supersede never touches a started job: it finishes, then the superseding job runs."""
    gate = Gate()
    ran: list[str] = []

    @queue.task(key="doc")
    async def render(version: str) -> str:
        ran.append(version)
        if version == "v1":
            await gate.wait()
        return version

    running = await render.enqueue("v1")
    async with queue.worker(concurrency=4):
        await wait_until(lambda: gate.entered == 1, message="v1 started")
        queued = await render.enqueue("v2")
        newest = await render.options(supersede=True).enqueue("v3")
        assert await queued.status() == "cancelled"
        assert await running.status() == "running"
        assert await newest.status() == "queued"
        gate.open()
        assert await running.result(timeout=RESULT_TIMEOUT) == "v1"
        assert await newest.result(timeout=RESULT_TIMEOUT) == "v3"
    assert ran == ["v1", "v3"]


async def test_supersede_spares_a_job_waiting_for_its_retry(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """A job that already started (now waiting between attempts) is not superseded."""
    attempts: dict[str, int] = {}

    @queue.task(key="doc", retries=Retry(attempts=2, backoff=0.3, jitter=False))
    async def render(version: str) -> str:
        attempts[version] = attempts.get(version, 0) + 1
        if version == "v1" and attempts[version] == 1:
            raise RuntimeError("first attempt fails")
        return version

    started = await render.enqueue("v1")
    async with queue.worker(concurrency=2):

        async def waiting_for_retry() -> bool:
            return await started.status() == "scheduled"

        await wait_until(waiting_for_retry, message="v1 waiting for its retry")
        newest = await render.options(supersede=True).enqueue("v2")
        assert await started.status() == "scheduled"
        assert await started.result(timeout=RESULT_TIMEOUT) == "v1"
        assert await newest.result(timeout=RESULT_TIMEOUT) == "v2"
    assert attempts == {"v1": 2, "v2": 1}


async def test_unique_returns_the_existing_job_and_writes_nothing(queue: Queue) -> None:
    """A second enqueue with the same unique value returns the first job and stores nothing."""

    @queue.task
    async def welcome(user: int) -> int:
        return user

    first = await welcome.options(unique="welcome:1").enqueue(1)
    second = await welcome.options(unique="welcome:1").enqueue(2)
    other = await welcome.options(unique="welcome:2").enqueue(2)

    assert second.id == first.id
    assert other.id != first.id
    assert len(await stored_jobs(queue)) == 2
    assert (await queue.backend.stats())["queued"] == 2
    info = await first.info()
    assert info.unique == "welcome:1"
    assert info.args + list(info.kwargs.values()) == [1]


async def test_unique_holds_while_the_job_runs(queue: Queue, wait_until: WaitUntil) -> None:
    """While the unique job is running, enqueueing it again still returns it."""
    gate = Gate()

    @queue.task
    async def sync_account(user: int) -> int:
        await gate.wait()
        return user

    first = await sync_account.options(unique="sync:1").enqueue(1)
    async with queue.worker(concurrency=2):
        await wait_until(lambda: gate.entered == 1, message="unique job started")
        again = await sync_account.options(unique="sync:1").enqueue(1)
        assert again.id == first.id
        assert await total_jobs(queue) == 1
        gate.open()
        assert await first.result(timeout=RESULT_TIMEOUT) == 1


async def test_unique_is_free_again_once_the_job_finished(queue: Queue) -> None:
    """After the unique job has finished, the same unique value makes a new job."""

    @queue.task
    async def ping() -> str:
        return "pong"

    first = await ping.options(unique="ping").enqueue()
    async with queue.worker(concurrency=1):
        await first.result(timeout=RESULT_TIMEOUT)
        second = await ping.options(unique="ping").enqueue()
        assert second.id != first.id
        assert await second.result(timeout=RESULT_TIMEOUT) == "pong"
    assert await total_jobs(queue) == 2


async def test_unique_within_one_batch(queue: Queue) -> None:
    """In one ``enqueue_many`` batch, a repeated unique value maps to the first job of the batch."""

    @queue.task
    async def ping(n: int) -> int:
        return n

    jobs = await queue.enqueue_many(
        [ping.options(unique="u").prepare(1), ping.options(unique="u").prepare(2), ping.prepare(3)]
    )
    assert jobs[0].id == jobs[1].id
    assert jobs[2].id != jobs[0].id
    assert await total_jobs(queue) == 2


async def test_unique_is_free_again_once_the_job_was_cancelled(queue: Queue) -> None:
    """Cancelling the unique job frees its unique value for a new job."""

    @queue.task
    async def ping() -> None: ...

    first = await ping.options(unique="ping").enqueue()
    await first.cancel()
    second = await ping.options(unique="ping").enqueue()
    assert second.id != first.id
    assert await second.status() == "queued"


async def test_a_job_retried_by_hand_gives_up_a_unique_value_held_by_an_active_job(
    queue: Queue,
) -> None:
    """Retrying an old job whose unique value an active job holds keeps the active one's claim."""

    @queue.task(name="uniq_fail")
    async def uniq_fail() -> None:
        raise RuntimeError("no")

    first = await uniq_fail.options(unique="u").enqueue()
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed):
            await first.result(timeout=10)
    second = await uniq_fail.options(unique="u", delay=3600).enqueue()
    assert second.id != first.id
    await first.retry()
    record = await first.info()
    assert record.status == "queued" and record.unique is None
    again = await uniq_fail.options(unique="u").enqueue()
    assert again.id == second.id


async def test_enqueueing_a_stored_id_again_returns_that_job_and_writes_nothing(queue: Queue) -> None:
    """The same prepared job sent twice (a retried request), or twice in a batch, is stored once."""

    @queue.task(key="lane")
    async def step(n: int) -> int:
        return n

    first = step.prepare(1)
    (job,) = await queue.enqueue_many([first])
    again = await queue.enqueue_many([first, first, step.prepare(2)])
    assert [j.id for j in again[:2]] == [job.id, job.id]
    stats = await queue.stats()
    assert stats["queued"] == 2 and sum(stats.values()) == 2
    async with queue.worker(concurrency=1):
        assert await again[2].result(timeout=10) == 2  # the lane is not wedged by a duplicate
    assert await job.result(timeout=10) == 1
