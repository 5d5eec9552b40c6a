"""The tasks the benchmarks run, on a queue a worker process can load.

The worker is started as ``python -m conveyor worker benchmarks.bench_app:queue`` with
``CONVEYOR_URL`` set to the store under test; the runner builds its own handle on the same store
with :func:`make_queue`. Task names are fixed so both sides agree whatever the module is called.
"""

from __future__ import annotations

import time

from conveyor import Queue


def make_queue(url: str | None = None) -> Queue:
    """A queue on ``url`` (``$CONVEYOR_URL`` when None) with the benchmark tasks registered."""
    q = Queue(url)

    @q.task(name="noop")
    async def noop() -> None:
        """Do nothing: what is measured is the queue's own cost per job."""

    @q.task(name="started_at")
    async def started_at(enqueued_at: float) -> float:
        """Return when this attempt started (time.time()); ``enqueued_at`` rides along for the record."""
        return time.time()

    return q


queue = make_queue()
