"""streaq: ``streaq run benchmarks.peers.streaq_app:worker`` with concurrency 100."""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from importlib.metadata import version
from typing import Any

from streaq import Worker

from benchmarks.peers.common import Peer, main, record_pickup, stamp, url

worker = Worker(redis_url=url(), concurrency=100)


@worker.task(name="noop")
async def noop() -> None:
    """Nothing."""


@worker.task(name="stamp")
async def stamp_task(name: str) -> None:
    """Note the time."""
    stamp(name)


@worker.task(name="pickup")
async def pickup(sent: float) -> None:
    """Record the pickup latency."""
    record_pickup(sent)


_tasks: dict[str, Any] = {"noop": noop, "stamp": stamp_task, "pickup": pickup}
_stack = AsyncExitStack()


async def _enqueue(name: str, *args: Any) -> None:
    await _tasks[name].enqueue(*args)


async def _open() -> None:
    await _stack.enter_async_context(worker)


async def _close() -> None:
    await _stack.aclose()


PEER = Peer(
    name="streaq", version=version("streaq"),
    worker=[sys.executable, "-m", "streaq", "run", "benchmarks.peers.streaq_app:worker"],
    enqueue=_enqueue, open=_open, close=_close, notes="async tasks, concurrency 100",
)

if __name__ == "__main__":
    main(PEER)
