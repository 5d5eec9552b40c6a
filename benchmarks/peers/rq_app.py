"""RQ: ``rq worker`` (its standard worker forks a work horse per job)."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

from redis import Redis
from rq import Queue

from benchmarks.peers.common import Peer, main, record_pickup, stamp, url

queue = Queue(connection=Redis.from_url(url()))


def noop() -> None:
    """Nothing."""


def stamp_task(name: str) -> None:
    """Note the time."""
    stamp(name)


def pickup(sent: float) -> None:
    """Record the pickup latency."""
    record_pickup(sent)


# by import path: run as a script, this module is __main__, which a worker cannot import
_funcs = {name: f"benchmarks.peers.rq_app.{fn}"
          for name, fn in (("noop", "noop"), ("stamp", "stamp_task"), ("pickup", "pickup"))}


async def _enqueue(name: str, *args: Any) -> None:
    queue.enqueue(_funcs[name], *args)


PEER = Peer(
    name="rq", version=version("rq"),
    worker=[sys.executable, "-m", "rq.cli", "worker", "--url", url(), "--quiet"],
    enqueue=_enqueue, notes="sync jobs, standard Worker (fork per job); 2,000 jobs",
    max_jobs=2_000,  # a fork per job: about 50 jobs/s, so 20,000 would take minutes
)

if __name__ == "__main__":
    main(PEER)
