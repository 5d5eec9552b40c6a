"""A worker killed with SIGKILL loses nothing: leases bring its jobs back to a fresh worker."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conveyor import Queue

from .procs import Workers, all_jobs, count, read_log, statuses, until

pytestmark = pytest.mark.timeout(60)

JOBS = 100


def seconds_for(n: int) -> float:
    """Job durations spread over 0.2-0.6 s."""
    return 0.2 + (n * 37 % 9) * 0.05


async def test_sigkill_mid_run_loses_nothing_and_reruns_only_in_flight_jobs(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """After SIGKILL every accepted job succeeds once resumed; only jobs running at the kill rerun."""
    work = app_queue.tasks["work"]
    jobs = await app_queue.enqueue_many([work.prepare(n, seconds_for(n)) for n in range(JOBS)])
    ids = {job.id for job in jobs}

    first = workers.start("--concurrency", "10")
    await until(lambda: sum(count(task_log, "end").values()) >= 30, 30, "30 jobs finished")
    first.signal(signal.SIGKILL)
    assert await first.wait_exit(5) == -signal.SIGKILL

    running_at_kill = {r.id for r in await all_jobs(app_queue) if r.status == "running"}
    log = read_log(task_log)
    started = {e.job_id for e in log if e.event == "start"}
    ended = {e.job_id for e in log if e.event == "end"}
    assert started - ended, "the kill should catch some jobs mid-run"
    assert started - ended <= running_at_kill, "a job cut off mid-run must still be running"
    assert (await statuses(app_queue)).get("succeeded", 0) < JOBS

    second = workers.start("--concurrency", "10")

    async def all_succeeded() -> bool:
        return (await statuses(app_queue)).get("succeeded", 0) == JOBS

    await until(all_succeeded, 30, f"all {JOBS} jobs succeeded")
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(15) == 0

    records = await all_jobs(app_queue)
    assert {r.id for r in records} == ids
    assert all(r.status == "succeeded" for r in records)
    assert sorted(r.result for r in records) == list(range(JOBS))
    starts, ends = count(task_log, "start"), count(task_log, "end")
    assert set(ends) == ids, "every job ran to its end at least once"
    twice = {job_id for job_id, n in starts.items() if n > 1}
    assert twice <= running_at_kill, "only jobs in flight at the kill may run twice"
    assert all(n <= 2 for n in starts.values())
