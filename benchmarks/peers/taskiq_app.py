"""Taskiq with taskiq-redis: ``taskiq worker`` with one worker process and 100 async tasks."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from taskiq_redis import ListQueueBroker

from benchmarks.peers.common import Peer, main, record_pickup, stamp, url

broker = ListQueueBroker(url())


@broker.task(task_name="noop")
async def noop() -> None:
    """Nothing."""


@broker.task(task_name="stamp")
async def stamp_task(name: str) -> None:
    """Note the time."""
    stamp(name)


@broker.task(task_name="pickup")
async def pickup(sent: float) -> None:
    """Record the pickup latency."""
    record_pickup(sent)


_tasks: dict[str, Any] = {"noop": noop, "stamp": stamp_task, "pickup": pickup}


async def _enqueue(name: str, *args: Any) -> None:
    await _tasks[name].kiq(*args)


PEER = Peer(
    name="taskiq", version=f"{version('taskiq')} (taskiq-redis {version('taskiq-redis')})",
    worker=[sys.executable, "-m", "taskiq", "worker", "benchmarks.peers.taskiq_app:broker",
            "--workers", "1", "--max-async-tasks", "100", "--log-level", "WARNING"],
    enqueue=_enqueue, open=broker.startup, close=broker.shutdown,
    notes="ListQueueBroker, async tasks, 1 worker process, max-async-tasks 100",
)

if __name__ == "__main__":
    main(PEER)
