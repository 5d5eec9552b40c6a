"""Dramatiq on Redis: ``dramatiq benchmarks.peers.dramatiq_app`` with one process (8 threads)."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.peers.common import Peer, main, record_pickup, stamp, url

broker = RedisBroker(url=url())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
def noop() -> None:
    """Nothing."""


@dramatiq.actor(actor_name="stamp")
def stamp_task(name: str) -> None:
    """Note the time."""
    stamp(name)


@dramatiq.actor(actor_name="pickup")
def pickup(sent: float) -> None:
    """Record the pickup latency."""
    record_pickup(sent)


_actors: dict[str, Any] = {"noop": noop, "stamp": stamp_task, "pickup": pickup}


async def _enqueue(name: str, *args: Any) -> None:
    _actors[name].send(*args)


PEER = Peer(
    name="dramatiq", version=version("dramatiq"),
    worker=[sys.executable, "-m", "dramatiq", "benchmarks.peers.dramatiq_app",
            "--processes", "1", "--threads", "8"],
    enqueue=_enqueue, notes="sync actors (its default), 1 process, 8 threads",
)

if __name__ == "__main__":
    main(PEER)
