"""Cancel: a queued job never runs; a running async job is cancelled; threads see ctx.cancelled."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Context, Queue, Retry
from conveyor.errors import JobCancelled

from .helpers import RESULT_TIMEOUT, Gate

WaitUntil = Callable[..., Awaitable[Any]]


async def test_cancelled_queued_job_never_runs(queue: Queue) -> None:
    """Cancelling a queued job makes it cancelled at once; the worker never runs it."""
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> str:
        ran.append(label)
        return label

    doomed = await record.enqueue("doomed")
    await queue.job(doomed.id).cancel()  # a handle made from the id works the same
    assert await doomed.status() == "cancelled"
    assert (await doomed.info()).finished_at is not None

    async with queue.worker(concurrency=2):
        later = await record.enqueue("later")
        assert await later.result(timeout=RESULT_TIMEOUT) == "later"
        with pytest.raises(JobCancelled):
            await doomed.result(timeout=RESULT_TIMEOUT)
    assert ran == ["later"]
    info = await doomed.info()
    assert (info.status, info.attempts) == ("cancelled", 0)


async def test_cancelled_scheduled_job_never_runs(queue: Queue) -> None:
    """Cancelling a scheduled job makes it cancelled at once; it does not run when due."""

    @queue.task
    async def later() -> None:
        raise AssertionError("must not run")

    @queue.task
    async def probe() -> None: ...

    job = await later.options(delay=0.2).enqueue()
    await job.cancel()
    assert await job.status() == "cancelled"
    async with queue.worker(concurrency=1):
        with pytest.raises(JobCancelled):
            await job.result(timeout=RESULT_TIMEOUT)
        # once a job with a longer delay has run, the cancelled one's time has come and gone
        await (await probe.options(delay=0.3).enqueue()).result(timeout=RESULT_TIMEOUT)
    info = await job.info()
    assert (info.status, info.attempts) == ("cancelled", 0)


async def test_cancel_running_async_job(queue: Queue, wait_until: WaitUntil) -> None:
    """Cancelling a running async job raises CancelledError inside it; the job ends cancelled."""
    gate = Gate()
    saw_cancel = asyncio.Event()

    @queue.task(retries=Retry(attempts=3, backoff=0.01))
    async def long_job() -> str:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return "finished"

    job = await long_job.enqueue()
    async with queue.worker(concurrency=1):
        await wait_until(lambda: gate.entered == 1, message="job started")
        assert await job.status() == "running"
        await job.cancel()
        with pytest.raises(JobCancelled):
            await job.result(timeout=RESULT_TIMEOUT)
        await asyncio.wait_for(saw_cancel.wait(), 5)
    info = await job.info()
    assert info.status == "cancelled"
    assert info.attempts == 1  # a cancel is not a failure: no retry
    assert info.finished_at is not None


async def test_cancel_running_thread_job_sets_ctx_cancelled(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """Cancelling a running ``def`` job sets ``ctx.cancelled``; its result is dropped."""
    started = threading.Event()
    saw_cancelled = threading.Event()

    @queue.task
    def crunch(ctx: Context) -> str:
        started.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if ctx.cancelled:
                saw_cancelled.set()
                return "partial"
            time.sleep(0.005)
        return "never told"

    job = await crunch.enqueue()
    async with queue.worker(concurrency=1):
        await wait_until(started.is_set, message="thread job started")
        await job.cancel()
        with pytest.raises(JobCancelled):
            await job.result(timeout=RESULT_TIMEOUT)
        await wait_until(saw_cancelled.is_set, message="thread saw ctx.cancelled")
    info = await job.info()
    assert info.status == "cancelled"
    assert info.result is None


async def test_cancel_request_reaches_a_running_job_quickly(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """A running job learns of a cancel within a second, even with a long lease."""
    gate = Gate()

    @queue.task
    async def long_job() -> None:
        await gate.wait()

    job = await long_job.enqueue()
    async with queue.worker(concurrency=1, lease=30):
        await wait_until(lambda: gate.entered == 1, message="job started")
        await job.cancel()
        t0 = time.monotonic()
        with pytest.raises(JobCancelled):
            await job.result(timeout=RESULT_TIMEOUT)
        assert time.monotonic() - t0 < 1.5


async def test_cancel_finished_job_changes_nothing(queue: Queue) -> None:
    """Cancelling a succeeded job leaves its status and result as they are."""

    @queue.task
    async def quick() -> int:
        return 5

    job = await quick.enqueue()
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == 5
    await job.cancel()
    assert await job.status() == "succeeded"
    assert await job.result(timeout=RESULT_TIMEOUT) == 5


async def test_cancelled_job_can_be_retried_by_hand(queue: Queue) -> None:
    """``job.retry()`` puts a cancelled job back; it then runs."""

    @queue.task
    async def quick() -> str:
        return "ran"

    job = await quick.enqueue()
    await job.cancel()
    await job.retry()
    assert await job.status() == "queued"
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == "ran"


async def test_events_of_a_cancelled_queued_job_end_at_cancelled(queue: Queue) -> None:
    """The event stream of a job cancelled before it ran ends with the ``cancelled`` status."""

    @queue.task
    async def never() -> None: ...

    job = await never.enqueue()
    await job.cancel()
    async with asyncio.timeout(RESULT_TIMEOUT):
        events = [ev async for ev in job.events()]
    assert [ev.data["status"] for ev in events if ev.type == "status"] == ["queued", "cancelled"]
    assert events[-1].terminal
