"""``cpu=True`` tasks run in a child process; cancelling one kills its process."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Queue
from conveyor.errors import JobCancelled

from . import cpu_tasks
from .helpers import RESULT_TIMEOUT

WaitUntil = Callable[..., Awaitable[Any]]


async def test_cpu_task_runs_in_another_process(queue: Queue) -> None:
    """A ``cpu=True`` task runs in a child process and its result comes back."""
    tasks = cpu_tasks.register(queue)
    job = await tasks["pid_and_square"].enqueue(12)
    async with queue.worker(concurrency=2):
        pid, square = await job.result(timeout=RESULT_TIMEOUT * 2)
    assert square == 144
    assert pid != os.getpid()


async def test_cancel_running_cpu_task_kills_it(queue: Queue, wait_until: WaitUntil) -> None:
    """Cancelling a running cpu task ends the job cancelled long before the task would finish."""
    tasks = cpu_tasks.register(queue)
    job = await tasks["spin"].enqueue(30.0)
    async with queue.worker(concurrency=1):

        async def reported() -> bool:
            return (await job.info()).progress is not None

        await wait_until(reported, timeout=RESULT_TIMEOUT, message="cpu task reported progress")
        await job.cancel()
        with pytest.raises(JobCancelled):
            await job.result(timeout=RESULT_TIMEOUT)
    assert (await job.info()).status == "cancelled"
