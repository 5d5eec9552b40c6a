"""The runner when the store gives it a job it is still running (its earlier lease was taken back)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from typing import Any

from conveyor import Queue
from conveyor.model import JobRecord, JobStatus
from conveyor.worker.attempt import Runner


async def test_a_job_claimed_again_stops_the_stale_attempt_and_keeps_the_new_one() -> None:
    """The new attempt stays the one the worker knows (renews, cancels); the stale one stops."""
    queue = Queue("memory://")
    started: list[int] = []
    gate = asyncio.Event()

    @queue.task(name="wait")
    async def wait() -> None:
        started.append(len(started) + 1)
        await gate.wait()

    acks: list[Any] = []
    runner = Runner(queue, worker_id="w", concurrency=4, cpu_workers=None,
                    counts=Counter(), on_success=acks.append, state={})
    first = JobRecord(id="job-1", task="wait", status=JobStatus.RUNNING, attempts=1,
                      lease_token="old")
    runner.launch(first)
    await asyncio.sleep(0)  # the first attempt starts
    second = replace(first, attempts=2, lease_token="new")
    runner.launch(second)
    old_run = next(r for r in runner.by_task.values() if r.lease.token == "old")
    assert old_run.reason == "lost"
    assert runner.running["job-1"].lease.token == "new"
    assert old_run.task is not None
    await asyncio.wait([old_run.task], timeout=5)  # the stale attempt ends...
    assert runner.running["job-1"].lease.token == "new"  # ...and leaves the new one in place
    gate.set()
    new_task = runner.running["job-1"].task
    assert new_task is not None
    await asyncio.wait_for(new_task, 5)
    assert [a.token for a in acks] == ["new"]
    assert "job-1" not in runner.running
    runner.close()
