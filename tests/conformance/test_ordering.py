"""Order within a queue (priority, then enqueue order), the concurrency cap, and queue selection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor import Queue
from conveyor.model import JobRecord, new_id

from .helpers import RESULT_TIMEOUT, Gate

WaitUntil = Callable[..., Awaitable[Any]]


async def test_priority_then_fifo_with_one_worker_slot(queue: Queue) -> None:
    """With concurrency=1, jobs run by descending priority, ties in enqueue order."""
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        ran.append(label)

    plan = [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 1), ("f", -3), ("g", 1)]
    jobs = [await record.options(priority=p).enqueue(label) for label, p in plan]

    async with queue.worker(concurrency=1):
        for job in jobs:
            await job.result(timeout=RESULT_TIMEOUT)

    assert ran == ["b", "d", "e", "g", "a", "c", "f"]


async def test_task_priority_is_the_default_and_options_override_it(queue: Queue) -> None:
    """``@queue.task(priority=)`` sets a default priority; ``.options(priority=)`` overrides it."""
    ran: list[str] = []

    @queue.task(priority=3)
    async def urgent(label: str) -> None:
        ran.append(label)

    @queue.task
    async def normal(label: str) -> None:
        ran.append(label)

    jobs = [
        await normal.enqueue("normal"),
        await urgent.enqueue("urgent"),
        await urgent.options(priority=0).enqueue("urgent-demoted"),
        await normal.options(priority=9).enqueue("normal-promoted"),
    ]
    assert [(await j.info()).priority for j in jobs] == [0, 3, 0, 9]

    async with queue.worker(concurrency=1):
        for job in jobs:
            await job.result(timeout=RESULT_TIMEOUT)

    assert ran == ["normal-promoted", "urgent", "normal", "urgent-demoted"]


async def test_enqueue_many_keeps_batch_order(queue: Queue) -> None:
    """``enqueue_many`` returns one handle per prepared call, in order, and runs them FIFO."""
    ran: list[int] = []

    @queue.task
    async def record(n: int) -> None:
        ran.append(n)

    jobs = await queue.enqueue_many([record.prepare(n) for n in range(20)])
    assert len(jobs) == 20
    assert len({j.id for j in jobs}) == 20

    async with queue.worker(concurrency=1):
        for job in jobs:
            await job.result(timeout=RESULT_TIMEOUT)

    assert ran == list(range(20))


async def test_enqueue_many_applies_per_call_options(queue: Queue) -> None:
    """Options given to one prepared call in a batch apply to that job only."""
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        ran.append(label)

    jobs = await queue.enqueue_many(
        [
            record.prepare("low"),
            record.options(priority=5).prepare("high"),
            record.prepare("low2"),
        ]
    )
    assert [(await j.info()).priority for j in jobs] == [0, 5, 0]

    async with queue.worker(concurrency=1):
        await asyncio.gather(*(j.result(timeout=RESULT_TIMEOUT) for j in jobs))

    assert ran == ["high", "low", "low2"]


async def test_job_ids_are_time_ordered(queue: Queue) -> None:
    """Job ids sort in enqueue order (UUIDv7 strings)."""

    @queue.task
    async def noop() -> None: ...

    ids = [(await noop.enqueue()).id for _ in range(50)]
    ids += [j.id for j in await queue.enqueue_many([noop.prepare() for _ in range(50)])]
    assert ids == sorted(ids)
    assert all(len(i) == 36 and i[14] == "7" for i in ids), ids[:3]


async def test_worker_runs_at_most_concurrency_jobs_at_once(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """With concurrency=3 and six blocked jobs, exactly three start until one finishes."""
    gate = Gate()

    @queue.task
    async def blocked(n: int) -> int:
        await gate.wait()
        return n

    @queue.task
    def blocked_thread(n: int) -> int:
        gate.wait_sync()
        return n

    jobs = [await blocked.enqueue(n) for n in range(3)]
    jobs += [await blocked_thread.enqueue(n) for n in range(3, 6)]
    async with queue.worker(concurrency=3):
        await wait_until(lambda: gate.entered == 3, message="three jobs started")
        stats = await queue.backend.stats()
        assert (stats["running"], stats["queued"]) == (3, 3)
        assert gate.entered == 3
        gate.open()
        assert [await j.result(timeout=RESULT_TIMEOUT) for j in jobs] == list(range(6))
    assert gate.entered == 6


async def test_worker_takes_jobs_only_from_its_queues(queue: Queue) -> None:
    """A worker given ``queues=`` claims jobs of those named queues and leaves the others."""
    ran: list[str] = []

    @queue.task(name="record")
    async def record(label: str) -> str:
        ran.append(label)
        return label

    mine = await record.enqueue("default-queue job")
    await queue.open()
    (other,) = await queue.backend.enqueue(
        [JobRecord(id=new_id(), task="record", queue="other", args=["other-queue job"])]
    )
    async with queue.worker(concurrency=2, queues=["other"]):
        assert await queue.job(other.id).result(timeout=RESULT_TIMEOUT) == "other-queue job"
    assert await mine.status() == "queued"
    assert ran == ["other-queue job"]
    assert (await queue.backend.stats("other"))["succeeded"] == 1
    assert (await queue.backend.stats("default"))["queued"] == 1
