"""Cancelling or timing out a running cpu=True job kills its process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conveyor import Queue
from conveyor.errors import JobCancelled, JobFailed

from .apps import cpu_app
from .procs import process_gone, until

pytestmark = pytest.mark.timeout(60)


async def test_cancel_running_cpu_job_kills_its_process(db_url: str, tmp_path: Path) -> None:
    """A cancelled cpu job ends cancelled within seconds, and the process that ran it is gone."""
    queue = Queue(db_url)
    burn = cpu_app.register(queue)["burn"]
    pidfile = tmp_path / "cancel.pid"
    async with queue, queue.worker(concurrency=2):
        job = await burn.enqueue(30.0, str(pidfile))
        await until(pidfile.exists, 20, "the cpu job started in its process")
        pid = int(pidfile.read_text())
        t0 = time.monotonic()
        await job.cancel()
        with pytest.raises(JobCancelled):
            await job.result(timeout=10)
        assert time.monotonic() - t0 < 3.0, "cancelled well before its natural end"
        await until(lambda: process_gone(pid), 5, f"cpu process {pid} killed")
    assert (await job.info()).status == "cancelled"


async def test_cpu_job_timeout_kills_its_process_and_fails(db_url: str, tmp_path: Path) -> None:
    """A cpu job past its timeout fails with TimeoutError, and its process is killed."""
    queue = Queue(db_url)
    burn = cpu_app.register(queue)["burn"]
    pidfile = tmp_path / "timeout.pid"
    async with queue, queue.worker(concurrency=2):
        job = await burn.options(timeout=1.0).enqueue(30.0, str(pidfile))
        await until(pidfile.exists, 20, "the cpu job started in its process")
        pid = int(pidfile.read_text())
        t0 = time.monotonic()
        with pytest.raises(JobFailed) as failed:
            await job.result(timeout=15)
        assert time.monotonic() - t0 < 5.0, "stopped at its timeout, not its natural end"
        await until(lambda: process_gone(pid), 5, f"cpu process {pid} killed")
    assert failed.value.error["type"] == "TimeoutError"
    info = await job.info()
    assert info.status == "failed"
    assert info.error is not None and info.error["type"] == "TimeoutError"
