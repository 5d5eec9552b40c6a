"""Huey with its Redis storage: ``huey_consumer`` with 8 worker threads (its default execution model)."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from huey import RedisHuey

from benchmarks.peers.common import Peer, main, record_pickup, stamp, url

# results=True is Huey's default; a task returning None stores nothing (store_none=False)
huey = RedisHuey("bench", url=url())


@huey.task(name="noop")
def noop() -> None:
    """Nothing."""


@huey.task(name="stamp")
def stamp_task(name: str) -> None:
    """Note the time."""
    stamp(name)


@huey.task(name="pickup")
def pickup(sent: float) -> None:
    """Record the pickup latency."""
    record_pickup(sent)


_tasks: dict[str, Any] = {"noop": noop, "stamp": stamp_task, "pickup": pickup}


async def _enqueue(name: str, *args: Any) -> None:
    _tasks[name](*args)  # Huey's client is synchronous: calling the task enqueues it


PEER = Peer(
    name="huey", version=version("huey"),
    worker=[sys.executable, "-m", "huey.bin.huey_consumer", "benchmarks.peers.huey_app.huey",
            "--workers", "8", "--worker-type", "thread", "--quiet"],
    enqueue=_enqueue, notes="sync tasks (its default), RedisHuey (blocking BRPOP), 8 worker threads",
)

if __name__ == "__main__":
    # Huey names a task after its module: enqueue through the module the consumer imports, not
    # through __main__ (its tasks would be "__main__.noop", unknown to the consumer)
    from benchmarks.peers import huey_app

    main(huey_app.PEER)
