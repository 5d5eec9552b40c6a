"""ARQ: ``arq benchmarks.peers.arq_app.WorkerSettings`` with max_jobs 100 (defaults otherwise)."""

from __future__ import annotations

import sys
from typing import Any

import arq
from arq.connections import ArqRedis, RedisSettings, create_pool

from benchmarks.peers.common import Peer, main, record_pickup, stamp, url


async def noop(ctx: dict[str, Any]) -> None:
    """Nothing."""


async def stamp_task(ctx: dict[str, Any], name: str) -> None:
    """Note the time."""
    stamp(name)


async def pickup(ctx: dict[str, Any], sent: float) -> None:
    """Record the pickup latency."""
    record_pickup(sent)


class WorkerSettings:
    """What ``arq`` runs."""

    functions = [noop, arq.func(stamp_task, name="stamp"), pickup]
    redis_settings = RedisSettings.from_dsn(url())
    max_jobs = 100


_pool: list[ArqRedis] = []


async def _open() -> None:
    _pool.append(await create_pool(RedisSettings.from_dsn(url())))


async def _enqueue(name: str, *args: Any) -> None:
    await _pool[0].enqueue_job(name, *args)


async def _close() -> None:
    await _pool[0].aclose()


PEER = Peer(
    name="arq", version=arq.VERSION,
    worker=[sys.executable, "-m", "arq", "benchmarks.peers.arq_app.WorkerSettings"],
    enqueue=_enqueue, open=_open, close=_close,
    notes="async tasks, max_jobs 100, default poll_delay 0.5 s; 100 pickup samples",
    max_samples=100,  # it polls every 0.5 s: each sample takes that long
)

if __name__ == "__main__":
    main(PEER)
