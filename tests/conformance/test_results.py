"""Results, status transitions, progress, and the event stream of a job."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest

from conveyor import Context, Queue
from conveyor.errors import JobFailed, JobNotFound, JobTimeout

from .helpers import RESULT_TIMEOUT, Gate

WaitUntil = Callable[..., Awaitable[Any]]


async def _collect(job: Any, timeout: float = RESULT_TIMEOUT) -> list[Any]:
    async with asyncio.timeout(timeout):
        return [ev async for ev in job.events()]


def _statuses(events: list[Any]) -> list[str]:
    return [ev.data["status"] for ev in events if ev.type == "status"]


async def test_status_goes_queued_running_succeeded(queue: Queue, wait_until: WaitUntil) -> None:
    """A job is queued, then running while its body runs, then succeeded with its result stored."""
    gate = Gate()

    @queue.task
    async def add(a: int, b: int) -> int:
        await gate.wait()
        return a + b

    job = await add.enqueue(2, b=3)
    info = await job.info()
    assert info.status == "queued"
    assert (info.attempts, info.started_at, info.finished_at, info.result) == (0, None, None, None)

    async with queue.worker(concurrency=1):
        await wait_until(lambda: gate.entered == 1, message="job started")
        assert await job.status() == "running"
        gate.open()
        assert await job.result(timeout=RESULT_TIMEOUT) == 5

    info = await job.info()
    assert info.status == "succeeded"
    assert info.result == 5
    assert info.error is None
    assert info.started_at is not None and info.finished_at is not None
    assert info.enqueued_at <= info.started_at <= info.finished_at
    assert info.task and info.queue == "default"
    assert info.to_dict()["status"] == "succeeded"


async def test_result_timeout_only_stops_the_waiting(queue: Queue, wait_until: WaitUntil) -> None:
    """``result(timeout=)`` raises JobTimeout when the job is not done; the job carries on."""
    gate = Gate()

    @queue.task
    async def slow() -> str:
        await gate.wait()
        return "done"

    job = await slow.enqueue()
    with pytest.raises(JobTimeout):
        await job.result(timeout=0.1)  # no worker yet: still queued
    async with queue.worker(concurrency=1):
        await wait_until(lambda: gate.entered == 1, message="job started")
        with pytest.raises(JobTimeout):
            await job.result(timeout=0.1)
        assert await job.status() == "running"
        gate.open()
        assert await job.result(timeout=RESULT_TIMEOUT) == "done"


async def test_thread_task_runs_off_the_event_loop(queue: Queue) -> None:
    """A plain ``def`` task runs in another thread and its result comes back."""
    loop_thread = threading.get_ident()

    @queue.task
    def where(x: int) -> dict[str, Any]:
        return {"x": x, "other_thread": threading.get_ident() != loop_thread}

    job = await where.enqueue(4)
    async with queue.worker(concurrency=2):
        assert await job.result(timeout=RESULT_TIMEOUT) == {"x": 4, "other_thread": True}


class Point(pydantic.BaseModel):
    x: int
    y: int


async def test_result_is_validated_into_the_return_annotation(queue: Queue) -> None:
    """The result comes back as the task's annotated return type, stored as plain JSON."""

    @queue.task
    async def make_point(x: int, y: int) -> Point:
        return Point(x=x, y=y)

    job = await make_point.enqueue(1, 2)
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == Point(x=1, y=2)
    assert (await job.info()).result == {"x": 1, "y": 2}


async def test_arguments_are_validated_into_the_annotations(queue: Queue) -> None:
    """The task receives arguments as its annotations describe them (a model, not a dict)."""
    got: list[Any] = []

    @queue.task
    async def move(p: Point, by: int = 1) -> None:
        got.append((p, by))

    job = await move.enqueue(Point(x=1, y=2), by=3)
    async with queue.worker(concurrency=1):
        await job.result(timeout=RESULT_TIMEOUT)
    assert got == [(Point(x=1, y=2), 3)]


async def test_context_is_injected_and_not_stored(queue: Queue) -> None:
    """A ``ctx: Context`` parameter is filled in by the worker (job id, attempt), never sent."""
    seen: list[tuple[str, int, bool]] = []

    @queue.task
    async def who(n: int, ctx: Context) -> int:
        seen.append((ctx.job_id, ctx.attempt, ctx.cancelled))
        return n

    job = await who.enqueue(3)
    info = await job.info()
    assert "ctx" not in info.kwargs
    assert info.args + list(info.kwargs.values()) == [3]
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == 3
    assert seen == [(job.id, 1, False)]


async def test_progress_is_stored_and_streamed(queue: Queue, wait_until: WaitUntil) -> None:
    """``ctx.progress`` updates the record's progress and appends progress events."""
    gate = Gate()

    @queue.task
    async def steps(ctx: Context) -> str:
        await ctx.progress(0.25, "quarter")
        await ctx.progress(0.5, "half")
        await gate.wait()
        return "ok"

    job = await steps.enqueue()
    async with queue.worker(concurrency=1):
        await wait_until(lambda: gate.entered == 1, message="progress reported")
        info = await job.info()
        assert info.progress == {"fraction": 0.5, "message": "half"}
        gate.open()
        assert await job.result(timeout=RESULT_TIMEOUT) == "ok"

    progress = [ev.data for ev in await _collect(job) if ev.type == "progress"]
    assert progress == [
        {"fraction": 0.25, "message": "quarter"},
        {"fraction": 0.5, "message": "half"},
    ]


async def test_thread_task_reports_progress(queue: Queue) -> None:
    """A ``def`` task calls ``ctx.progress`` without awaiting and the report is stored."""

    @queue.task
    def steps(ctx: Context) -> None:
        ctx.progress(0.75, "from a thread")

    job = await steps.enqueue()
    async with queue.worker(concurrency=1):
        await job.result(timeout=RESULT_TIMEOUT)
    assert (await job.info()).progress == {"fraction": 0.75, "message": "from a thread"}


async def test_events_replay_then_end_at_the_terminal_status(queue: Queue) -> None:
    """``events()`` on a finished job replays its history in order and stops at the last status."""

    @queue.task
    async def steps(ctx: Context) -> int:
        await ctx.progress(0.5, "half")
        return 1

    job = await steps.enqueue()
    async with queue.worker(concurrency=1):
        await job.result(timeout=RESULT_TIMEOUT)

    events = await _collect(job)
    assert [ev.seq for ev in events] == list(range(1, len(events) + 1))
    assert all(ev.job_id == job.id for ev in events)
    assert _statuses(events) == ["queued", "running", "succeeded"]
    kinds = [ev.type for ev in events]
    assert kinds.index("progress") > kinds.index("status")  # after "queued" and "running"
    assert events[-1].terminal
    assert not any(ev.terminal for ev in events[:-1])
    times = [ev.at for ev in events]
    assert times == sorted(times)

    # a second replay sees the same history; ``after`` skips what was seen
    assert [ev.seq for ev in await _collect(job)] == [ev.seq for ev in events]


async def test_events_stream_live_until_terminal(queue: Queue, wait_until: WaitUntil) -> None:
    """A watcher that starts before the job runs receives its events live and stops at the end."""
    gate = Gate()

    @queue.task
    async def steps(ctx: Context) -> None:
        await ctx.progress(0.1, "started")
        await gate.wait()
        await ctx.progress(1.0, "finished")

    job = await steps.enqueue()
    received: list[Any] = []

    async def watch() -> None:
        async for ev in job.events():
            received.append(ev)

    watcher = asyncio.create_task(watch())
    async with queue.worker(concurrency=1):
        await wait_until(
            lambda: any(ev.type == "progress" for ev in received), message="live progress event"
        )
        assert not watcher.done()
        gate.open()
        await asyncio.wait_for(watcher, RESULT_TIMEOUT)

    assert _statuses(received) == ["queued", "running", "succeeded"]
    assert [ev.data["message"] for ev in received if ev.type == "progress"] == [
        "started", "finished",
    ]


async def test_events_of_a_failed_retried_job(queue: Queue) -> None:
    """Each attempt appears in the events; the stream ends at ``dead`` with the error attached."""
    from conveyor import Retry

    @queue.task(retries=Retry(attempts=2, backoff=0.01, jitter=False))
    async def broken() -> None:
        raise ValueError("broken")

    job = await broken.enqueue()
    async with queue.worker(concurrency=1):
        events = await _collect(job)
    statuses = _statuses(events)
    assert statuses[0] == "queued"
    assert statuses.count("running") == 2
    assert statuses[-1] == "dead"
    assert events[-1].terminal


async def test_handle_from_id_sees_the_same_job(queue: Queue) -> None:
    """``queue.job(id)`` gives a handle on the stored job: status, info and result."""

    @queue.task
    async def double(x: int) -> int:
        return 2 * x

    job = await double.enqueue(21)
    handle = queue.job(job.id)
    assert handle.id == job.id
    assert await handle.status() == "queued"
    async with queue.worker(concurrency=1):
        assert await handle.result(timeout=RESULT_TIMEOUT) == 42
    assert (await handle.info()).id == job.id


async def test_unknown_job_id_raises_job_not_found(queue: Queue) -> None:
    """Asking about an id that names no job raises JobNotFound."""

    @queue.task
    async def noop() -> None: ...

    await noop.enqueue()  # the store exists and is not empty
    missing = queue.job("01900000-0000-7000-8000-000000000000")
    with pytest.raises(JobNotFound):
        await missing.info()
    with pytest.raises(JobNotFound):
        await missing.status()
    with pytest.raises(JobNotFound):
        await missing.result(timeout=1)


async def test_stats_count_jobs_by_status(queue: Queue) -> None:
    """``stats()`` counts every status, zero included, and follows the jobs."""

    @queue.task
    async def outcome(fail: bool) -> None:
        if fail:
            raise RuntimeError("fail")

    jobs = [await outcome.enqueue(False), await outcome.enqueue(True), await outcome.enqueue(False)]
    cancelled = await outcome.options(delay=60).enqueue(False)
    await cancelled.cancel()
    scheduled = await outcome.options(delay=60).enqueue(False)

    before = await queue.backend.stats()
    assert set(before) == {
        "queued", "scheduled", "running", "succeeded", "failed", "cancelled", "dead",
    }
    assert (before["queued"], before["scheduled"], before["cancelled"]) == (3, 1, 1)

    async with queue.worker(concurrency=3):
        for job in jobs:
            with contextlib.suppress(JobFailed):
                await job.result(timeout=RESULT_TIMEOUT)
    after = await queue.backend.stats()
    assert after == {
        "queued": 0, "scheduled": 1, "running": 0, "succeeded": 2,
        "failed": 1, "cancelled": 1, "dead": 0,
    }
    assert await scheduled.status() == "scheduled"


async def test_purge_deletes_finished_jobs_past_retention_and_keeps_active_ones(queue: Queue) -> None:
    """purge(before) deletes finished jobs and their events, never a queued one."""
    from conveyor.backends.base import Backend

    if type(queue.backend).purge is Backend.purge:
        pytest.skip(f"{type(queue.backend).__name__} expires finished jobs by TTL instead")

    @queue.task(name="quick")
    async def quick() -> int:
        return 1

    done = await quick.enqueue()
    async with queue.worker(concurrency=1):
        assert await done.result(timeout=RESULT_TIMEOUT) == 1
    waiting = await quick.enqueue()
    assert await queue.backend.purge(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await queue.backend.purge(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await queue.backend.get(done.id) is None
    assert await queue.backend.events(done.id) == []
    assert (await waiting.status()) == "queued"


async def test_a_leading_ctx_parameter_is_injected_and_positional_args_still_fit(queue: Queue) -> None:
    """A task whose first parameter is `ctx: Context` gets the context; the payload fills the rest."""

    @queue.task(name="lead")
    async def lead(ctx: Context, a: int, b: str = "x") -> str:
        return f"{ctx.attempt}:{a}:{b}"

    job = await lead.enqueue(5, "y")
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == "1:5:y"


async def test_events_of_a_job_retried_by_hand_go_past_its_old_verdict(queue: Queue) -> None:
    """events() replays a failed-then-retried job's history up to its new final status."""
    calls: list[int] = []

    @queue.task(name="flaky_once")
    async def flaky_once() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return "second time"

    job = await flaky_once.enqueue()
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed):
            await job.result(timeout=RESULT_TIMEOUT)
        await job.retry()
        assert await job.result(timeout=RESULT_TIMEOUT) == "second time"
    statuses = [e.data["status"] async for e in job.events() if e.type == "status"]
    assert statuses[-1] == "succeeded"
    assert "failed" in statuses


async def test_waiting_for_events_that_never_come_leaves_nothing_behind(queue: Queue) -> None:
    """Timed-out event waits on a job that stays quiet do not pile up in the backend."""

    @queue.task(name="quiet")
    async def quiet() -> None: ...

    job = await quiet.options(delay=3600).enqueue()
    seen = await queue.backend.events(job.id)
    for _ in range(50):
        assert await queue.backend.wait_for_events(job.id, seen[-1].seq, timeout=0.001) == []
    waiters = getattr(queue.backend, "_event_waiters", None)
    if waiters is not None:  # the memory backend keeps one future per waiting call
        assert waiters.get(job.id) in (None, [])


async def test_worker_deletes_jobs_past_retention_on_its_own(make_queue: Any, wait_until: Any) -> None:
    """A running worker purges finished jobs past ``Settings.retention`` every ``purge_interval``."""
    from conveyor import Settings

    queue = make_queue()
    queue.settings = Settings(retention=0.5, purge_interval=0.2)

    @queue.task(name="quick")
    async def quick() -> int:
        return 1

    async with queue.worker(concurrency=1):
        done = await quick.enqueue()
        assert await done.result(timeout=RESULT_TIMEOUT) == 1

        async def gone() -> bool:
            return await queue.backend.get(done.id) is None

        await wait_until(gone, RESULT_TIMEOUT, message="the finished job purged")
