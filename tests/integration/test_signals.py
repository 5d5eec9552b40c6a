"""SIGTERM drains a CLI worker within its grace period; a second signal exits at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from conveyor import Queue

from .procs import Workers, all_jobs, count, process_gone, statuses, until

pytestmark = pytest.mark.timeout(60)


async def test_sigterm_lets_running_jobs_finish_and_exits_zero(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """On SIGTERM running jobs finish within grace, nothing new is claimed, exit 0, none runs twice."""
    work = app_queue.tasks["work"]
    jobs = await app_queue.enqueue_many([work.prepare(n, 1.0) for n in range(8)])
    proc = workers.start("--concurrency", "4", "--grace", "5")
    await until(lambda: len(count(task_log, "start")) == 4, 20, "4 jobs started")
    proc.signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert await proc.wait_exit(10) == 0
    assert time.monotonic() - t0 < 5.0, "running jobs finished within the grace period"

    starts, ends = count(task_log, "start"), count(task_log, "end")
    assert set(starts) == set(ends) and len(starts) == 4, "every started job ran to its end"
    by_id = {r.id: r for r in await all_jobs(app_queue)}
    for job in jobs:
        record = by_id[job.id]
        if job.id in starts:
            assert record.status == "succeeded", record
        else:
            assert (record.status, record.attempts) == ("queued", 0), "not claimed during shutdown"

    rest = workers.start("--concurrency", "4")

    async def all_succeeded() -> bool:
        return (await statuses(app_queue)).get("succeeded", 0) == 8

    await until(all_succeeded, 20, "the other 4 jobs succeeded on a new worker")
    rest.signal(signal.SIGTERM)
    assert await rest.wait_exit(10) == 0
    starts = count(task_log, "start")
    assert set(starts) == {job.id for job in jobs}
    assert set(starts.values()) == {1}, f"a job ran twice: {starts}"
    assert "finishing running jobs" in proc.output()


async def test_job_outlasting_grace_goes_back_queued_without_an_attempt(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """A job still running after --grace is released queued with attempts 0; a new worker runs it once."""
    hold = app_queue.tasks["hold"]
    long_job, waiting = await app_queue.enqueue_many([hold.prepare(1), hold.prepare(2)])
    proc = workers.start("--concurrency", "1", "--grace", "0.5", env={"ITEST_HOLD": "60"})
    await until(lambda: long_job.id in count(task_log, "start"), 20, "the long job started")
    proc.signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert await proc.wait_exit(10) == 0
    assert time.monotonic() - t0 < 5.0
    for job in (long_job, waiting):
        info = await job.info()
        assert (info.status, info.attempts) == ("queued", 0), info
    assert not count(task_log, "end"), "the long job was interrupted, not finished"

    again = workers.start("--concurrency", "1", env={"ITEST_HOLD": "0.05"})

    async def both_succeeded() -> bool:
        return (await statuses(app_queue)).get("succeeded", 0) == 2

    await until(both_succeeded, 20, "both jobs succeeded on the new worker")
    again.signal(signal.SIGTERM)
    assert await again.wait_exit(10) == 0
    info = await long_job.info()
    assert info.attempts == 1, "the interrupted attempt was not counted"
    assert count(task_log, "end") == {long_job.id: 1, waiting.id: 1}
    assert count(task_log, "start") == {long_job.id: 2, waiting.id: 1}


async def test_second_signal_exits_at_once_and_leases_bring_jobs_back(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """A second SIGTERM ends the worker at once with a non-zero code; its jobs come back by lease."""
    hold = app_queue.tasks["hold"]
    jobs = await app_queue.enqueue_many([hold.prepare(n) for n in range(3)])
    proc = workers.start("--concurrency", "3", "--grace", "30", env={"ITEST_HOLD": "60"})
    await until(lambda: len(count(task_log, "start")) == 3, 20, "3 jobs started")
    proc.signal(signal.SIGTERM)
    await proc.wait_output("finishing running jobs")
    proc.signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = await proc.wait_exit(5)
    assert time.monotonic() - t0 < 2.0, "the second signal does not wait for the grace period"
    assert code != 0
    assert "second signal" in proc.output()
    assert {r.status for r in await all_jobs(app_queue)} == {"running"}, "nothing was released"

    again = workers.start("--concurrency", "3", env={"ITEST_HOLD": "0.05"})

    async def all_succeeded() -> bool:
        return (await statuses(app_queue)).get("succeeded", 0) == 3

    await until(all_succeeded, 20, "expired leases put the jobs back and they succeeded")
    again.signal(signal.SIGTERM)
    assert await again.wait_exit(10) == 0
    assert count(task_log, "end") == {job.id: 1 for job in jobs}


async def test_cpu_job_outlasting_grace_is_released_and_its_process_killed(
    app_queue: Queue, workers: Workers, tmp_path: Path
) -> None:
    """SIGTERM with a cpu=True job past --grace: its process is killed, the job goes back queued."""
    pidfile = tmp_path / "burn.pid"
    job = await app_queue.tasks["burn"].enqueue(30.0, str(pidfile))
    proc = workers.start("--concurrency", "1", "--grace", "0.5")
    await until(pidfile.exists, 20, "the cpu job started in its process")
    pid = int(pidfile.read_text())
    proc.signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert await proc.wait_exit(10) == 0
    assert time.monotonic() - t0 < 5.0
    await until(lambda: process_gone(pid), 5, f"cpu process {pid} killed")
    info = await job.info()
    assert (info.status, info.attempts) == ("queued", 0), info


async def test_blocking_def_job_outlasting_grace_does_not_keep_the_worker_alive(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """SIGTERM with a def job that ignores ctx.cancelled past --grace: released, and the worker exits."""
    job = await app_queue.tasks["block"].enqueue(1)
    proc = workers.start("--concurrency", "1", "--grace", "0.5", env={"ITEST_HOLD": "30"})
    await until(lambda: job.id in count(task_log, "start"), 20, "the blocking job started")
    proc.signal(signal.SIGTERM)
    await proc.wait_output("stopped")
    info = await job.info()
    assert (info.status, info.attempts) == ("queued", 0), info
    # the job is back in the queue: a worker still running its body could run it twice
    assert await proc.wait_exit(6) == 0, "the worker exits soon after the grace period"
