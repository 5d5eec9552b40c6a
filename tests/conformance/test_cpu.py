"""``cpu=True`` tasks run in a child process; failures come back; a cancel kills the process."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Queue
from conveyor.errors import JobCancelled, JobFailed

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


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its parent's wait() counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def test_cancel_running_cpu_task_kills_its_process(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """Cancelling a running cpu task ends the job cancelled and kills the process running it."""
    tasks = cpu_tasks.register(queue)
    job = await tasks["spin"].enqueue(30.0)
    async with queue.worker(concurrency=1):

        async def reported() -> Any:
            return (await job.info()).progress

        progress = await wait_until(reported, timeout=RESULT_TIMEOUT, message="cpu task started")
        pid = int(progress["message"])
        assert pid != os.getpid()
        await job.cancel()
        with pytest.raises(JobCancelled):
            await job.result(timeout=RESULT_TIMEOUT)
        if sys.platform == "linux":
            await wait_until(lambda: _process_gone(pid), message=f"cpu process {pid} killed")
    assert (await job.info()).status == "cancelled"


async def test_cpu_task_failure_is_stored(queue: Queue) -> None:
    """An exception in a cpu task is stored with its type, message and traceback."""
    tasks = cpu_tasks.register(queue)
    job = await tasks["pid_and_square"].enqueue(-1)
    async with queue.worker(concurrency=1):
        with pytest.raises(JobFailed) as caught:
            await job.result(timeout=RESULT_TIMEOUT)
    assert caught.value.error["type"] == "ValueError"
    assert caught.value.error["message"] == "x must not be negative"
    assert "pid_and_square" in caught.value.error["traceback"]
