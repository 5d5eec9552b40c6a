"""Celery on Redis: ``celery worker`` with the solo pool (one process), no result backend."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from celery import Celery

from benchmarks.peers.common import Peer, main, record_pickup, stamp, url

app = Celery("bench", broker=url())
app.conf.task_ignore_result = True


@app.task(name="noop")
def noop() -> None:
    """Nothing."""


@app.task(name="stamp")
def stamp_task(name: str) -> None:
    """Note the time."""
    stamp(name)


@app.task(name="pickup")
def pickup(sent: float) -> None:
    """Record the pickup latency."""
    record_pickup(sent)


_tasks: dict[str, Any] = {"noop": noop, "stamp": stamp_task, "pickup": pickup}


async def _enqueue(name: str, *args: Any) -> None:
    _tasks[name].delay(*args)


PEER = Peer(
    name="celery", version=version("celery"),
    worker=[sys.executable, "-m", "celery", "-A", "benchmarks.peers.celery_app", "worker",
            "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING"],
    enqueue=_enqueue, notes="sync tasks, solo pool (one process), ignore_result",
)

if __name__ == "__main__":
    main(PEER)
