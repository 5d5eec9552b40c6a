"""conveyor on Redis: ``python -m conveyor worker`` with --concurrency 100."""

from __future__ import annotations

import sys
from typing import Any

import conveyor
from benchmarks.peers.common import Peer, main, record_pickup, stamp, url
from conveyor import Queue

queue = Queue(url(), name="bench")


@queue.task(name="noop")
async def noop() -> None:
    """Nothing: the figure is the queue's own cost per job."""


@queue.task(name="stamp")
async def stamp_task(name: str) -> None:
    """Note the time (first and last job of the drain)."""
    stamp(name)


@queue.task(name="pickup")
async def pickup(sent: float) -> None:
    """Record how long after ``sent`` this job started."""
    record_pickup(sent)


_tasks: dict[str, Any] = {"noop": noop, "stamp": stamp_task, "pickup": pickup}


async def _enqueue(name: str, *args: Any) -> None:
    await _tasks[name].enqueue(*args)


async def _close() -> None:
    await queue.close()


PEER = Peer(
    name="conveyor", version=conveyor.__version__ if hasattr(conveyor, "__version__") else "dev",
    worker=[sys.executable, "-m", "conveyor", "worker", "benchmarks.peers.conveyor_app:queue",
            "--concurrency", "100", "--log-level", "warning"],
    enqueue=_enqueue, open=queue.open, close=_close, notes="async tasks, concurrency 100",
)

if __name__ == "__main__":
    main(PEER)
