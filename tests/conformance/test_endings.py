"""Every way a task can end stores exactly one verdict, and a `def` thread keeps its slot until done."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from conveyor import Context, Queue, Retry
from conveyor.errors import JobCancelled, JobFailed

from . import ending_tasks
from .ending_tasks import ENDINGS, end
from .helpers import RESULT_TIMEOUT

RETRY_TWICE = Retry(attempts=2, backoff=0.0, jitter=False)


def _check_stored_error(error: dict[str, Any] | None, fragment: str) -> None:
    """A stored error is plain, printable text of bounded size that names the exception type."""
    assert error is not None
    assert fragment in error["type"], error["type"]
    for field in ("type", "message", "traceback"):
        text = error[field]
        assert isinstance(text, str)
        text.encode("utf-8")  # no lone surrogates: every client can print it
        assert len(text) <= 100_000, f"{field} is {len(text)} chars"
    assert error["message"], "the message says something even when str(exc) fails"


@pytest.mark.parametrize("flavour", ["async", "def"])
@pytest.mark.parametrize("kind", list(ENDINGS))
async def test_every_ending_stores_one_verdict_by_the_retry_policy(
    queue: Queue, kind: str, flavour: str
) -> None:
    """A task raising CancelledError, KeyboardInterrupt, an unprintable exception... is retried, then dead."""
    runs: list[int] = []
    if flavour == "async":

        @queue.task(name="ending", retries=RETRY_TWICE)
        async def ending_async(kind: str, ctx: Context) -> Any:
            runs.append(ctx.attempt)
            return end(kind)

    else:

        @queue.task(name="ending", retries=RETRY_TWICE)
        def ending_def(kind: str, ctx: Context) -> Any:
            runs.append(ctx.attempt)
            return end(kind)

    @queue.task
    async def after() -> str:
        return "still working"

    job = await queue.tasks["ending"].enqueue(kind)
    async with queue.worker(concurrency=2):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)
        assert await (await after.enqueue()).result(timeout=RESULT_TIMEOUT) == "still working"
    assert runs == [1, 2], "one attempt per policy step, no more"
    info = await job.info()
    assert (info.status, info.attempts) == ("dead", 2)
    assert caught.value.status == "dead"
    _check_stored_error(info.error, ENDINGS[kind])


async def test_every_ending_in_a_cpu_process_stores_one_verdict(queue: Queue) -> None:
    """The same endings raised in a cpu=True child each end the job dead after its two attempts."""
    task = queue.task(cpu=True, name="end_in_process", retries=RETRY_TWICE)(
        ending_tasks.end_in_process.fn
    )
    jobs = {kind: await task.enqueue(kind) for kind in ENDINGS}
    async with queue.worker(concurrency=4, cpu_workers=2):
        for kind, job in jobs.items():
            with pytest.raises(JobFailed):
                await job.result(timeout=RESULT_TIMEOUT * 2)
            info = await job.info()
            assert (info.status, info.attempts) == ("dead", 2), (kind, info.error)
            _check_stored_error(info.error, ENDINGS[kind])


@pytest.mark.parametrize("flavour", ["async", "def", "cpu"])
async def test_unencodable_result_fails_that_job_and_the_rest_succeed(
    queue: Queue, flavour: str
) -> None:
    """A result JSON cannot encode (10**5000) fails its job at once; 50 others succeed; stop returns."""
    if flavour == "async":

        @queue.task(name="huge", retries=Retry(attempts=3))
        async def huge_async() -> Any:
            return end("huge_int")

    elif flavour == "def":

        @queue.task(name="huge", retries=Retry(attempts=3))
        def huge_def() -> Any:
            return end("huge_int")

    else:
        queue.task(cpu=True, name="huge", retries=Retry(attempts=3))(ending_tasks.end_in_process.fn)

    @queue.task
    async def good(n: int) -> int:
        return n

    args = ("huge_int",) if flavour == "cpu" else ()
    bad = await queue.tasks["huge"].enqueue(*args)
    goods = await queue.enqueue_many([good.prepare(n) for n in range(50)])
    worker = queue.worker(concurrency=8)
    await worker.start()
    try:
        with pytest.raises(JobFailed) as caught:
            await bad.result(timeout=RESULT_TIMEOUT * 2)
        assert [await job.result(timeout=RESULT_TIMEOUT) for job in goods] == list(range(50))
    finally:
        await asyncio.wait_for(worker.stop(), 15)
    # NotSerializable, or its LimitExceeded when the value is past a documented limit
    assert caught.value.error["type"].endswith(("NotSerializable", "LimitExceeded")), caught.value.error
    assert "return value" in caught.value.error["message"]
    info = await bad.info()
    assert info.attempts == 1, "an unencodable result is a permanent error: no retry"
    assert info.result is None


async def test_def_lane_jobs_that_ignore_their_timeout_never_overlap(queue: Queue) -> None:
    """Three `def` jobs of one lane that outlive their timeout run one after another, never at once."""
    spans: dict[int, tuple[float, float]] = {}

    @queue.task(key="lane", timeout=0.1)
    def stubborn(n: int, ctx: Context) -> int:
        start = time.monotonic()
        time.sleep(0.4)  # ignores ctx.cancelled on purpose
        spans[n] = (start, time.monotonic())
        return n

    jobs = await queue.enqueue_many([stubborn.prepare(n) for n in range(3)])
    async with queue.worker(concurrency=3):
        for job in jobs:
            with pytest.raises(JobFailed) as caught:
                await job.result(timeout=RESULT_TIMEOUT)
            assert caught.value.error["type"] == "TimeoutError"
            assert "past its" in caught.value.error["message"], caught.value.error["message"]
    ordered = [spans[n] for n in range(3)]
    for (_, end_a), (start_b, _) in itertools.pairwise(ordered):
        assert start_b >= end_a, f"lane jobs overlapped: {ordered}"


async def test_quick_jobs_after_a_stuck_thread_run_before_their_timeout_counts(queue: Queue) -> None:
    """A stuck `def` thread keeps its slot; jobs claimed later start, and their timeout counts from then."""
    ran: list[int] = []

    @queue.task(timeout=0.1)
    def stuck() -> None:
        time.sleep(0.6)  # ignores its timeout

    @queue.task(timeout=0.3)
    def quick(n: int) -> int:
        ran.append(n)
        return n

    first = await stuck.enqueue()
    quicks = await queue.enqueue_many([quick.prepare(n) for n in range(5)])
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed):
            await first.result(timeout=RESULT_TIMEOUT)
        assert [await job.result(timeout=RESULT_TIMEOUT) for job in quicks] == list(range(5))
    assert sorted(ran) == list(range(5))


async def test_cancelled_def_job_stays_running_until_its_thread_returns(
    queue: Queue, wait_until: Any
) -> None:
    """A cancelled `def` job that ignores ctx.cancelled ends cancelled only once its thread returns."""
    entered, told, finish = threading.Event(), threading.Event(), threading.Event()

    @queue.task
    def deaf(ctx: Context) -> str:
        entered.set()
        while not finish.wait(0.01):  # sees the cancel, and carries on regardless
            if ctx.cancelled:
                told.set()
        return "late"

    job = await deaf.enqueue()
    async with queue.worker(concurrency=1):
        await wait_until(entered.is_set, RESULT_TIMEOUT, message="the thread started")
        await job.cancel()
        await wait_until(told.is_set, RESULT_TIMEOUT, message="the thread saw ctx.cancelled")
        assert await job.status() == "running", "no verdict while the thread still runs"
        finish.set()
        with pytest.raises(JobCancelled):
            await job.result(timeout=RESULT_TIMEOUT)
    info = await job.info()
    assert info.status == "cancelled"
    assert info.result is None
    assert info.error is not None and "past" in info.error["message"], info.error


@pytest.mark.parametrize("flavour", ["async", "def", "cpu"])
async def test_progress_in_a_tight_loop_is_coalesced_and_the_last_one_stored(
    queue: Queue, flavour: str
) -> None:
    """10,000 progress calls cause far fewer writes, and the final report is stored before the verdict."""
    if flavour == "async":

        @queue.task(name="busy")
        async def busy_async(n: int, ctx: Context) -> int:
            for i in range(1, n + 1):
                ctx.progress(i / n, f"{i}")  # not awaited: reports are coalesced
            return n

    elif flavour == "def":

        @queue.task(name="busy")
        def busy_def(n: int, ctx: Context) -> int:
            for i in range(1, n + 1):
                ctx.progress(i / n, f"{i}")
            return n

    else:
        queue.task(cpu=True, name="busy")(ending_tasks.report_often.fn)

    job = await queue.tasks["busy"].enqueue(10_000)
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT * 2) == 10_000
    info = await job.info()
    assert info.progress == {"fraction": 1.0, "message": "10000"}
    writes = [ev for ev in await queue.backend.events(job.id) if ev.type == "progress"]
    assert 1 <= len(writes) <= 200, f"{len(writes)} progress writes for 10,000 reports"
    assert writes[-1].data == {"fraction": 1.0, "message": "10000"}


@pytest.mark.parametrize("late", ["timeout", "cancel"])
async def test_a_stop_that_comes_while_the_verdict_is_stored_changes_nothing(
    queue: Queue, late: str
) -> None:
    """A timeout or cancel landing after the body returned, while its last progress is stored, is too late."""
    stored = asyncio.Event()

    @queue.task(timeout=0.3 if late == "timeout" else None)
    async def quick(ctx: Context) -> str:
        ctx.progress(1.0, "done")  # not awaited: stored when the attempt settles
        return "ok"

    await queue.open()
    backend = queue.backend
    write_progress = backend.progress

    async def slow_progress(lease: Any, fraction: float, message: str) -> bool:
        # a busy store: the last report is still being written when the stop comes
        if late == "timeout":
            await asyncio.sleep(0.6)  # past the 0.3 s timeout
        else:
            await queue.job(lease.job_id).cancel()
            await asyncio.sleep(0.3)  # the cancel request reaches the worker meanwhile
        ok = await write_progress(lease, fraction, message)
        stored.set()
        return ok

    backend.progress = slow_progress  # type: ignore[method-assign]
    job = await quick.enqueue()
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == "ok"
    assert stored.is_set()
    info = await job.info()
    assert (info.status, info.attempts) == ("succeeded", 1)
    assert info.progress is not None and info.progress["message"] == "done"


async def test_a_def_task_raising_stop_iteration_stores_it_as_it_is(queue: Queue) -> None:
    """``next()`` on an empty iterator in a `def` task is stored as StopIteration, not RuntimeError."""

    @queue.task
    def first(items: list[int]) -> int:
        return next(iter(items))

    job = await first.enqueue([])
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)
    assert caught.value.type == "StopIteration", caught.value.error
