"""The worker's event loop stays free for CPU and blocking work; a task that blocks it is named."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conveyor import Queue, Settings

from .apps import cpu_app

pytestmark = pytest.mark.timeout(60)


async def heartbeat(stop: asyncio.Event) -> float:
    """Tick every 10 ms until ``stop``; return the longest gap between two ticks, in seconds."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    worst = 0.0
    while not stop.is_set():
        await asyncio.sleep(0.01)
        now = loop.time()
        worst = max(worst, now - last)
        last = now
    return worst


async def test_cpu_and_blocking_jobs_leave_the_loop_free(db_url: str) -> None:
    """While a cpu=True busy loop and a blocking def run, a 10 ms heartbeat never waits > 100 ms."""
    queue = Queue(db_url, settings=Settings(loop_lag_warning=0.1))
    tasks = cpu_app.register(queue)
    async with queue, queue.worker(concurrency=4) as worker:
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(stop))
        burn = await tasks["burn"].enqueue(1.5)
        nap = await tasks["nap"].enqueue(1.0)
        assert await nap.result(timeout=20) == 1.0
        assert await burn.result(timeout=20) != 0
        stop.set()
        worst = await beat
        assert worst < 0.1, f"the event loop was blocked for {worst:.3f} s"
        assert worker.stalls == [], "the watchdog saw no stall"


async def test_watchdog_names_an_async_task_that_blocks_the_loop(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An async def that calls time.sleep(0.5) shows up in worker.stalls by name, with a warning."""
    caplog.set_level(logging.WARNING, logger="conveyor")
    queue = Queue(db_url)
    tasks = cpu_app.register(queue)
    async with queue, queue.worker(concurrency=2) as worker:
        job = await tasks["hog"].enqueue(0.5)
        assert await job.result(timeout=20) == 0.5
        stalls = [s for s in worker.stalls if s.task == "hog"]
    assert stalls, f"no stall named 'hog' in {worker.stalls}"
    assert stalls[0].job_id == job.id
    assert stalls[0].seconds >= queue.settings.loop_lag_warning
    assert "cpu_app.py" in stalls[0].location
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "hog" in r.getMessage()]
    assert warnings, "a warning names the task"
    assert "blocked" in warnings[0].getMessage()
