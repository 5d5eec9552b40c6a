"""What every peer's benchmark shares: the tasks' side effects and the client-side procedure.

Each ``benchmarks/peers/<name>.py`` defines, with its library's own API, three tasks (``noop``,
``stamp(name)`` and ``pickup(sent)``) and a :class:`Peer`: how to enqueue one job and the command
line of the library's standard worker. :func:`main` then measures, in this order:

1. **enqueue**: ``jobs`` jobs, one enqueue call at a time (the first and the last are ``stamp``);
2. **drain**: the worker process starts and runs them; jobs/s between the ``start`` and the
   ``end`` stamps, taken inside the first and the last job, so worker start-up is not counted;
3. **pickup**: with the worker idle, one ``pickup(time.time())`` at a time; the job records how
   long after ``sent`` it started (one machine, one clock).

It prints one JSON object. The Redis URL comes from ``$BENCH_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
LATENCIES = "bench:latency"

_client: redis.Redis | None = None


def url() -> str:
    """The Redis under test."""
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(url())
    return _client


def stamp(name: str) -> None:
    """Inside a task: note the time under ``bench:<name>``."""
    _redis().set(f"bench:{name}", repr(time.time()))


def record_pickup(sent: float) -> None:
    """Inside a task, first thing: how long after ``sent`` (seconds since the epoch) it started."""
    _redis().rpush(LATENCIES, repr(time.time() - sent))


@dataclass
class Peer:
    """One library under test, as its client sees it."""

    name: str
    version: str
    #: the library's standard worker, run from the repository root
    worker: list[str]
    #: enqueue one job of a task by name ("noop", "stamp", "pickup") with its arguments
    enqueue: Callable[..., Awaitable[None]]
    open: Callable[[], Awaitable[None]] = field(default=lambda: _nothing())
    close: Callable[[], Awaitable[None]] = field(default=lambda: _nothing())
    #: what is worth knowing about how it was run
    notes: str = ""
    stop_signal: int = signal.SIGTERM
    #: caps for libraries too slow to do the full count in reasonable time (noted in the table)
    max_jobs: int | None = None
    max_samples: int | None = None


async def _nothing() -> None:
    return None


async def _wait_key(key: str, timeout: float, worker: subprocess.Popen[bytes]) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = _redis().get(key)
        if value is not None:
            return float(value)
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}) before {key} was set")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} not set within {timeout} s")
        await asyncio.sleep(0.05)


async def measure(peer: Peer, jobs: int, samples: int, log: Path) -> dict[str, Any]:
    """Enqueue, drain and pickup figures for one peer (see the module docstring)."""
    jobs = min(jobs, peer.max_jobs or jobs)
    samples = min(samples, peer.max_samples or samples)
    await peer.open()
    try:
        start = time.perf_counter()
        await peer.enqueue("stamp", "start")
        for _ in range(jobs - 2):
            await peer.enqueue("noop")
        await peer.enqueue("stamp", "end")
        enqueue_rate = jobs / (time.perf_counter() - start)

        env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_REDIS_URL": url()}
        with log.open("wb") as sink:
            # a blocking Popen is fine here: nothing else runs on this loop meanwhile
            worker = subprocess.Popen(  # noqa: ASYNC220
                peer.worker, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            began = await _wait_key("bench:start", 120, worker)
            ended = await _wait_key("bench:end", max(600.0, jobs / 20), worker)
            await asyncio.sleep(1.0)  # let it finish the tail and go idle
            latencies = []
            for _ in range(samples):
                await asyncio.sleep(random.uniform(0.005, 0.015))
                await peer.enqueue("pickup", time.time())
                got = _redis().blpop([LATENCIES], timeout=30)
                if got is None:
                    raise TimeoutError("a pickup job did not start within 30 s")
                latencies.append(float(got[1]) * 1000)
        finally:
            worker.send_signal(peer.stop_signal)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    finally:
        await peer.close()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "peer": peer.name, "version": peer.version, "notes": peer.notes, "jobs": jobs,
        "samples": samples,
        "enqueue_jobs_per_s": round(enqueue_rate, 1),
        "drain_jobs_per_s": round(jobs / (ended - began), 1),
        "pickup_p50_ms": round(statistics.median(latencies), 3),
        "pickup_p99_ms": round(cuts[98], 3),
    }


def main(peer: Peer) -> None:
    """``python -m benchmarks.peers.<name> JOBS SAMPLES``: print the figures as JSON."""
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    log = Path(os.environ.get("BENCH_WORKER_LOG", f"/tmp/bench-{peer.name}.log"))
    print(json.dumps(asyncio.run(measure(peer, jobs, samples, log))))
