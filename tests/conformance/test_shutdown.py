"""Graceful shutdown: in-flight jobs finish within the grace period, the rest go back unharmed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from conveyor import Context, Queue

from .helpers import RESULT_TIMEOUT, Gate

WaitUntil = Callable[..., Awaitable[Any]]


async def test_leaving_the_worker_block_lets_running_jobs_finish(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """A job still running when the worker stops finishes within the grace period and succeeds."""
    entered = asyncio.Event()
    release = asyncio.Event()

    @queue.task
    async def short() -> str:
        entered.set()
        await release.wait()
        return "finished"

    job = await short.enqueue()
    async with queue.worker(concurrency=1, grace=5):
        await asyncio.wait_for(entered.wait(), RESULT_TIMEOUT)
        # let the job finish only once shutdown has begun
        asyncio.get_running_loop().call_later(0.1, release.set)
    info = await job.info()
    assert info.status == "succeeded"
    assert info.result == "finished"


async def test_job_outlasting_grace_is_released_without_counting_an_attempt(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """A job still running after the grace period is cancelled and put back queued, attempt 0."""
    gate = Gate()
    saw_cancel = asyncio.Event()

    @queue.task
    async def stubborn(ctx: Context) -> int:
        try:
            await gate.wait(timeout=30)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return ctx.attempt

    job = await stubborn.enqueue()
    async with queue.worker(concurrency=1, grace=0.2):
        await wait_until(lambda: gate.entered == 1, message="job started")
    assert saw_cancel.is_set()
    info = await job.info()
    assert (info.status, info.attempts) == ("queued", 0)

    gate.open()
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == 1


async def test_stopped_worker_claims_nothing_more(queue: Queue, wait_until: WaitUntil) -> None:
    """After ``worker.stop()`` no new job is started; queued jobs stay queued."""

    @queue.task
    async def noop() -> None: ...

    first = await noop.enqueue()
    async with queue.worker(concurrency=1) as worker:
        await first.result(timeout=RESULT_TIMEOUT)
        await worker.stop()
        later = await noop.enqueue()
    assert await later.status() == "queued"

