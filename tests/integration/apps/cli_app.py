"""The app a CLI worker loads in the integration tests: ``integration.apps.cli_app:queue``.

Its store is ``$CONVEYOR_URL``. Every task appends one line per step to the file named by
``$ITEST_LOG`` (``O_APPEND``, one ``write`` per line, so lines from many processes never mix):
``<event> <job id> <pid> <fields...>``. The test reads that file to know what ran, where and when.
"""

from __future__ import annotations

import asyncio
import os
import time

from conveyor import Context, Queue, Settings

from . import cpu_app

#: a short lease so a killed worker's jobs come back within about a second; a test that needs
#: "exactly once" on a loaded machine sets $ITEST_LEASE longer (a lease that expires under load
#: rightly gives the job to another worker: at-least-once)
SETTINGS = Settings(
    lease=float(os.environ.get("ITEST_LEASE", "1.0")), recover_interval=0.2, grace=10.0,
    cancel_poll=0.05,
)


def record(event: str, ctx: Context, *fields: object) -> None:
    """Append ``event job_id pid fields...`` to ``$ITEST_LOG`` in a single write."""
    line = " ".join([event, ctx.job_id, str(os.getpid()), *map(str, fields)]) + "\n"
    fd = os.open(os.environ["ITEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def build(url: str | None = None) -> Queue:
    """A queue on ``url`` (default ``$CONVEYOR_URL``) with the app's tasks registered."""
    queue = Queue(url, settings=SETTINGS)

    @queue.task(name="work")
    async def work(n: int, seconds: float, ctx: Context) -> int:
        """Take ``seconds``, recording start and end; return ``n``."""
        record("start", ctx, n)
        await asyncio.sleep(seconds)
        record("end", ctx, n)
        return n

    @queue.task(name="hold")
    async def hold(n: int, ctx: Context) -> int:
        """Take ``$ITEST_HOLD`` seconds (a worker's environment decides how long)."""
        record("start", ctx, n)
        await asyncio.sleep(float(os.environ.get("ITEST_HOLD", "0.05")))
        record("end", ctx, n)
        return n

    @queue.task(name="block")
    def block(n: int, ctx: Context) -> int:
        """A plain ``def`` (thread) that sleeps ``$ITEST_HOLD`` seconds and never looks at ctx."""
        record("start", ctx, n)
        time.sleep(float(os.environ.get("ITEST_HOLD", "0.05")))
        record("end", ctx, n)
        return n

    @queue.task(name="stall")
    async def stall(n: int, ctx: Context) -> int:
        """An ``async def`` whose first step blocks the event loop for ``$ITEST_HOLD`` seconds."""
        record("start", ctx, n)
        time.sleep(float(os.environ.get("ITEST_HOLD", "0.05")))  # noqa: ASYNC251 - the point
        record("end", ctx, n)
        return n

    @queue.task(name="tick")
    async def tick(n: int, ctx: Context) -> int:
        """Record one run; return ``n``."""
        record("run", ctx, n)
        return n

    @queue.task(name="step", key="lane:{lane}")
    async def step(lane: int, seq: int, ctx: Context) -> int:
        """One step of an ordered lane: record start and end with the lane's sequence number."""
        record("start", ctx, lane, seq)
        await asyncio.sleep((seq % 3) * 0.002)
        record("end", ctx, lane, seq)
        return seq

    cpu_app.register(queue)  # burn (cpu=True), nap, hog
    return queue


queue = build()
