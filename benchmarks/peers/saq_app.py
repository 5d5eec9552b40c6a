"""SAQ: ``saq benchmarks.peers.saq_app.settings`` with concurrency 100."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from saq import Queue

from benchmarks.peers.common import Peer, main, record_pickup, stamp, url

queue = Queue.from_url(url())


async def noop(ctx: dict[str, Any]) -> None:
    """Nothing."""


async def stamp_task(ctx: dict[str, Any], *, name: str) -> None:
    """Note the time."""
    stamp(name)


async def pickup(ctx: dict[str, Any], *, sent: float) -> None:
    """Record the pickup latency."""
    record_pickup(sent)


settings = {
    "queue": queue,
    "functions": [noop, ("stamp", stamp_task), pickup],
    "concurrency": 100,
}


async def _enqueue(name: str, *args: Any) -> None:
    kwargs = {"stamp": lambda: {"name": args[0]}, "pickup": lambda: {"sent": args[0]}}
    await queue.enqueue(name, **(kwargs[name]() if name in kwargs else {}))


async def _open() -> None:
    await queue.connect()


async def _close() -> None:
    await queue.disconnect()


PEER = Peer(
    name="saq", version=version("saq"),
    worker=[sys.executable, "-m", "saq", "benchmarks.peers.saq_app.settings"],
    enqueue=_enqueue, open=_open, close=_close, notes="async tasks, concurrency 100",
)

if __name__ == "__main__":
    main(PEER)
