"""``delay=`` and ``at=``: the job is ``scheduled``, does not run before its time, then runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conveyor import Queue

from .helpers import RESULT_TIMEOUT

# timestamps from the backend and from the task body come from the same machine clock; allow
# for storage rounding only
CLOCK_SLACK = timedelta(milliseconds=2)


def _now() -> datetime:
    return datetime.now(UTC)


async def test_delayed_job_is_scheduled_and_runs_after_its_delay(queue: Queue) -> None:
    """``delay=`` stores the job as scheduled for now+delay; it runs then, not before."""
    started_at: list[datetime] = []

    @queue.task
    async def later() -> str:
        started_at.append(_now())
        return "done"

    @queue.task
    async def now() -> str:
        return "now"

    before = _now()
    job = await later.options(delay=0.5).enqueue()
    info = await job.info()
    assert info.status == "scheduled"
    assert info.scheduled_for is not None
    assert before + timedelta(seconds=0.5) - CLOCK_SLACK <= info.scheduled_for
    assert info.scheduled_for <= _now() + timedelta(seconds=0.5) + CLOCK_SLACK

    async with queue.worker(concurrency=2):
        # a job enqueued after it runs first: the worker is live and passes the delayed job over
        assert await (await now.enqueue()).result(timeout=RESULT_TIMEOUT) == "now"
        status = await job.status()
        if _now() < info.scheduled_for:  # the status was read before the job was due
            assert status == "scheduled"
        assert await job.result(timeout=RESULT_TIMEOUT) == "done"

    assert len(started_at) == 1
    assert started_at[0] >= info.scheduled_for - CLOCK_SLACK
    final = await job.info()
    assert final.started_at is not None and final.started_at >= info.scheduled_for - CLOCK_SLACK


async def test_at_schedules_for_an_aware_datetime(queue: Queue) -> None:
    """``at=`` stores that moment as ``scheduled_for`` and the job runs at or after it."""
    started_at: list[datetime] = []

    @queue.task
    async def later() -> None:
        started_at.append(_now())

    when = _now() + timedelta(seconds=0.4)
    job = await later.options(at=when).enqueue()
    info = await job.info()
    assert info.status == "scheduled"
    assert info.scheduled_for is not None
    assert abs(info.scheduled_for - when) <= CLOCK_SLACK

    async with queue.worker(concurrency=1):
        await job.result(timeout=RESULT_TIMEOUT)
    assert started_at[0] >= when - CLOCK_SLACK


async def test_delay_accepts_a_timedelta(queue: Queue) -> None:
    """``delay=`` takes a ``timedelta`` as well as seconds."""

    @queue.task
    async def later() -> None: ...

    before = _now()
    job = await later.options(delay=timedelta(minutes=5)).enqueue()
    info = await job.info()
    assert info.status == "scheduled"
    assert info.scheduled_for is not None
    assert info.scheduled_for >= before + timedelta(minutes=5) - CLOCK_SLACK


async def test_at_in_the_past_is_queued_at_once(queue: Queue) -> None:
    """A job whose ``at`` has already passed is queued and runs right away."""

    @queue.task
    async def overdue() -> str:
        return "ran"

    job = await overdue.options(at=_now() - timedelta(hours=1)).enqueue()
    assert await job.status() == "queued"
    async with queue.worker(concurrency=1):
        assert await job.result(timeout=RESULT_TIMEOUT) == "ran"


async def test_due_scheduled_jobs_keep_priority_order(queue: Queue) -> None:
    """Scheduled jobs that have become due are claimed by priority, like queued ones."""
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        ran.append(label)

    when = _now() + timedelta(seconds=0.2)
    jobs = [
        await record.options(at=when).enqueue("low"),
        await record.options(at=when, priority=5).enqueue("high"),
    ]
    async with queue.worker(concurrency=1):
        for job in jobs:
            await job.result(timeout=RESULT_TIMEOUT)
    assert ran == ["high", "low"]


async def test_far_future_job_does_not_run(queue: Queue) -> None:
    """A job scheduled an hour ahead is still scheduled after the worker has run other work."""

    @queue.task
    async def later() -> None:
        raise AssertionError("ran an hour early")

    @queue.task
    async def now() -> None: ...

    job = await later.options(delay=3600).enqueue()
    async with queue.worker(concurrency=2):
        for _ in range(3):
            await (await now.enqueue()).result(timeout=RESULT_TIMEOUT)
    info = await job.info()
    assert info.status == "scheduled"
    assert info.attempts == 0
