"""Retries with backoff, the ``dead`` letter, ``failed`` without retries, and retry by hand."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Context, Queue, Retry
from conveyor.errors import JobFailed

from .helpers import RESULT_TIMEOUT

WaitUntil = Callable[..., Awaitable[Any]]


async def test_retries_back_off_then_the_job_is_dead(queue: Queue) -> None:
    """Every attempt fails: attempts are spaced by backoff*2**(n-1), then the job is dead."""
    starts: list[float] = []
    seen_attempts: list[int] = []

    @queue.task(retries=Retry(attempts=3, backoff=0.05, jitter=False))
    async def always_fails(n: int, ctx: Context) -> None:
        starts.append(time.monotonic())
        seen_attempts.append(ctx.attempt)
        raise ValueError(f"boom {n} on attempt {ctx.attempt}")

    job = await always_fails.enqueue(7)
    async with queue.worker(concurrency=2):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)

    assert seen_attempts == [1, 2, 3]
    slack = 0.005
    assert starts[1] - starts[0] >= 0.05 - slack
    assert starts[2] - starts[1] >= 0.10 - slack

    exc = caught.value
    assert exc.status == "dead"
    assert exc.error["type"] == "ValueError"
    assert exc.error["message"] == "boom 7 on attempt 3"
    assert "ValueError: boom 7 on attempt 3" in exc.error["traceback"]
    assert "always_fails" in exc.error["traceback"]
    assert exc.type == "ValueError"

    info = await job.info()
    assert info.status == "dead"
    assert info.attempts == 3
    assert info.max_attempts == 3
    assert info.error == exc.error
    assert info.finished_at is not None
    assert (await queue.backend.stats())["dead"] == 1


async def test_failure_without_retries_is_failed(queue: Queue) -> None:
    """By default a job gets one attempt; an exception ends it ``failed`` with the error stored."""
    runs: list[int] = []

    @queue.task
    def divide(a: int, b: int) -> float:
        runs.append(1)
        return a / b

    job = await divide.enqueue(1, 0)
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)

    assert runs == [1]
    assert caught.value.status == "failed"
    info = await job.info()
    assert (info.status, info.attempts, info.max_attempts) == ("failed", 1, 1)
    assert info.error is not None
    assert info.error["type"] == "ZeroDivisionError"
    assert info.error["message"] == "division by zero"
    assert "ZeroDivisionError" in info.error["traceback"]
    assert "divide" in info.error["traceback"]


async def test_retry_then_success(queue: Queue) -> None:
    """A job that fails twice then succeeds ends ``succeeded`` with its result after 3 attempts."""

    @queue.task(retries=Retry(attempts=5, backoff=0.01, jitter=False))
    async def flaky(ctx: Context) -> int:
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return ctx.attempt

    job = await flaky.enqueue()
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == 3
    info = await job.info()
    assert (info.status, info.attempts, info.max_attempts) == ("succeeded", 3, 5)


async def test_between_attempts_the_job_is_scheduled_with_its_last_error(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """After a failed attempt with backoff, the job is scheduled for later and shows the error."""

    @queue.task(retries=Retry(attempts=2, backoff=0.5, jitter=False))
    async def flaky(ctx: Context) -> str:
        if ctx.attempt == 1:
            raise KeyError("missing")
        return "ok"

    job = await flaky.enqueue()
    async with queue.worker(concurrency=1):

        async def waiting() -> Any:
            info = await job.info()
            return info if info.status == "scheduled" else None

        info = await wait_until(waiting, message="job scheduled for its retry")
        assert info.attempts == 1
        assert info.error is not None and info.error["type"] == "KeyError"
        assert info.scheduled_for is not None
        assert info.finished_at is None
        assert await job.result(timeout=RESULT_TIMEOUT) == "ok"


async def test_int_retries_count_retries_after_the_first_attempt(queue: Queue) -> None:
    """``retries=2`` means three attempts in all."""

    @queue.task(retries=2)
    async def work() -> None: ...

    assert (await (await work.enqueue()).info()).max_attempts == 3


async def test_options_retries_override_the_task(queue: Queue) -> None:
    """``.options(retries=)`` gives one job its own policy."""
    attempts: list[int] = []

    @queue.task
    async def work(ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("no")

    job = await work.options(retries=Retry(attempts=2, backoff=0.01, jitter=False)).enqueue()
    assert (await job.info()).max_attempts == 2
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)
    assert caught.value.status == "dead"
    assert attempts == [1, 2]


async def test_dead_job_can_be_retried_by_hand(queue: Queue) -> None:
    """``job.retry()`` puts a dead job back as queued with attempts starting over; it runs again."""
    healthy = {"now": False}

    @queue.task(retries=Retry(attempts=2, backoff=0.01, jitter=False))
    async def work(ctx: Context) -> int:
        if not healthy["now"]:
            raise RuntimeError("down")
        return ctx.attempt

    job = await work.enqueue()
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed):
            await job.result(timeout=RESULT_TIMEOUT)
        assert await job.status() == "dead"

    await job.retry()
    info = await job.info()
    assert (info.status, info.attempts) == ("queued", 0)

    healthy["now"] = True
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == 1
    assert (await job.info()).status == "succeeded"


async def test_failed_job_can_be_retried_by_hand(queue: Queue) -> None:
    """``job.retry()`` on a failed job (no retries configured) runs it once more."""
    calls: list[int] = []

    @queue.task
    async def work() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first call fails")
        return len(calls)

    job = await work.enqueue()
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed):
            await job.result(timeout=RESULT_TIMEOUT)
        await job.retry()
        assert await job.result(timeout=RESULT_TIMEOUT) == 2


async def test_retry_by_hand_leaves_active_jobs_alone(queue: Queue) -> None:
    """``job.retry()`` on a queued job changes nothing."""

    @queue.task
    async def work() -> None: ...

    job = await work.enqueue()
    before = await job.info()
    await job.retry()
    after = await job.info()
    assert (after.status, after.attempts, after.enqueued_at) == (
        before.status, before.attempts, before.enqueued_at,
    )
    stats = await queue.backend.stats()
    assert stats["queued"] == 1 and sum(stats.values()) == 1


async def test_final_failure_is_logged_with_its_traceback(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    """The last failure of a job is logged at ERROR with the job id, error type and traceback."""

    @queue.task
    async def broken() -> None:
        raise LookupError("nothing here")

    job = await broken.enqueue()
    with caplog.at_level(logging.WARNING, logger="conveyor"):
        async with queue.worker(concurrency=1):
            with pytest.raises(JobFailed):
                await job.result(timeout=RESULT_TIMEOUT)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and job.id in r.getMessage()]
    assert errors, [r.getMessage() for r in caplog.records]
    text = errors[0].getMessage() + (errors[0].exc_text or "")
    assert "LookupError" in text
    assert "nothing here" in text
    assert "Traceback" in text
