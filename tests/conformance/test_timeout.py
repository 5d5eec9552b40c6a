"""``timeout=`` per attempt: a timed-out attempt fails with ``TimeoutError`` and follows retries."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conveyor import Context, Queue, Retry
from conveyor.errors import JobFailed

from .helpers import RESULT_TIMEOUT


async def test_async_task_over_its_timeout_fails_with_timeout_error(queue: Queue) -> None:
    """An async attempt outlasting ``timeout`` is cancelled; the job fails with TimeoutError."""
    saw_cancel = asyncio.Event()

    @queue.task(timeout=0.2)
    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    job = await hang.enqueue()
    started = time.monotonic()
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)
    assert time.monotonic() - started < 5
    assert saw_cancel.is_set()
    assert caught.value.status == "failed"
    assert caught.value.error["type"] == "TimeoutError"
    info = await job.info()
    assert info.status == "failed"
    assert info.timeout == 0.2
    assert info.error is not None and info.error["type"] == "TimeoutError"


async def test_timeout_follows_the_retry_policy(queue: Queue) -> None:
    """Timed-out attempts are retried like failures; after the last one the job is dead."""
    attempts: list[int] = []

    @queue.task(timeout=0.1, retries=Retry(attempts=2, backoff=0.01, jitter=False))
    async def hang(ctx: Context) -> None:
        attempts.append(ctx.attempt)
        await asyncio.Event().wait()

    job = await hang.enqueue()
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)
    assert attempts == [1, 2]
    assert caught.value.status == "dead"
    assert caught.value.error["type"] == "TimeoutError"


async def test_options_timeout_overrides_the_task(queue: Queue) -> None:
    """``.options(timeout=)`` sets one job's timeout; other jobs of the task are unaffected."""
    release = asyncio.Event()

    @queue.task
    async def wait_for_release() -> str:
        await release.wait()
        return "released"

    limited = await wait_for_release.options(timeout=0.1).enqueue()
    unlimited = await wait_for_release.enqueue()
    async with queue.worker(concurrency=2):
        with pytest.raises(JobFailed) as caught:
            await limited.result(timeout=RESULT_TIMEOUT)
        assert caught.value.error["type"] == "TimeoutError"
        assert await unlimited.status() == "running"
        release.set()
        assert await unlimited.result(timeout=RESULT_TIMEOUT) == "released"


async def test_thread_task_over_its_timeout_fails_and_sees_cancelled(queue: Queue) -> None:
    """A ``def`` attempt past its timeout fails with TimeoutError and sees ``ctx.cancelled``."""
    saw_cancelled = threading.Event()

    @queue.task(timeout=0.2)
    def slow(ctx: Context) -> str:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if ctx.cancelled:
                saw_cancelled.set()
                return "too late"
            time.sleep(0.01)
        return "never told"

    job = await slow.enqueue()
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)
    assert caught.value.error["type"] == "TimeoutError"
    assert saw_cancelled.wait(5)
    assert (await job.info()).result is None


async def test_fast_job_is_not_affected_by_its_timeout(queue: Queue) -> None:
    """A job that finishes within its timeout succeeds normally."""

    @queue.task(timeout=5)
    async def quick() -> int:
        return 42

    job = await quick.enqueue()
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == 42
