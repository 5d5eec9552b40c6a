"""The cpu process pool never leaves a child behind: not one started for a cancelled job, not one
that finished starting after the pool closed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from conveyor.worker.procpool import ProcessPool

from .apps import cpu_app
from .procs import until

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc"),
]


def _cpu_children() -> list[int]:
    """Live spawn children of this process (the pool's, not multiprocessing's resource tracker)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _burn(seconds: float) -> SimpleNamespace:
    """The stored form of one ``burn`` job, as the pool reads it."""
    return SimpleNamespace(id="job", args=[seconds], kwargs={}, queue="default", attempts=1)


async def test_child_still_starting_when_the_pool_closes_is_killed() -> None:
    """Cancel a job while its child starts and close the pool at once: the child does not live on."""
    assert not _cpu_children()
    pool = ProcessPool(1)
    running = asyncio.create_task(pool.run(cpu_app.burn, _burn(30.0)))
    await asyncio.sleep(0)  # the child is being started in a thread now
    running.cancel()
    pool.close()
    with pytest.raises(asyncio.CancelledError):
        await running
    # wait for the thread starting the child to be done with it, then look
    await asyncio.get_running_loop().shutdown_default_executor()
    await until(lambda: not _cpu_children(), 10, "no child outlives the closed pool")


async def test_child_started_for_a_cancelled_job_serves_the_next_one() -> None:
    """A job cancelled while its child starts leaves that child idle for the next job, not orphaned."""
    assert not _cpu_children()
    pool = ProcessPool(1)
    try:
        running = asyncio.create_task(pool.run(cpu_app.burn, _burn(30.0)))
        await asyncio.sleep(0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        pid = await pool.run(cpu_app.burn, _burn(0.01))
        assert _cpu_children() == [pid], "one child in all: the one started first, reused"
    finally:
        pool.close()
    await until(lambda: not _cpu_children(), 10, "close() kills it")
