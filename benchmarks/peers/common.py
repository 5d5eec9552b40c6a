"""What every peer's benchmark shares: the tasks' side effects and the client-side procedure.

Each ``benchmarks/peers/<name>.py`` defines, with its library's own API, three tasks (``noop``,
``stamp(name)`` and ``pickup(sent)``) and a :class:`Peer`: how to enqueue one job and the command
line of the library's standard worker. :func:`main` then measures, in this order:

1. **enqueue**: ``jobs`` jobs, one enqueue call at a time (the first and the last are ``stamp``);
2. **drain**: the worker process starts and runs them; jobs/s between the ``start`` and the
   ``end`` stamps, taken inside the first and the last job, so worker start-up is not counted;
3. **pickup**: with the worker idle, one ``pickup(time.time())`` at a time; the job records how
   long after ``sent`` it started (one machine, one clock).

With ``--steady SAMPLES`` it measures pickup under steady load instead (:func:`steady`): jobs
arrive at a fixed rate, one every 5 ms on an absolute timeline, each doing one Redis write of its
own, while the worker keeps up.

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
    """Inside a task, first thing: how long after ``sent`` (seconds since the epoch) it started.

    This is also the job's own I/O under steady load: one write, on the task's own Redis client.
    """
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


def _start_worker(peer: Peer, sink: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_REDIS_URL": url()}
    return subprocess.Popen(
        peer.worker, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def _stop_worker(peer: Peer, worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(peer.stop_signal)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _percentiles(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"pickup_p50_ms": round(statistics.median(latencies), 3), "pickup_p99_ms": round(cuts[98], 3)}


STEADY_INTERVAL = 0.005  # one arrival every 5 ms
STEADY_WARMUP = 20


async def steady(peer: Peer, samples: int, log: Path) -> dict[str, Any]:
    """Pickup latency with a job arriving every 5 ms; each job does one Redis write of its own.

    Arrival ``i`` is due at ``t0 + i * 5 ms`` on the monotonic clock, so an enqueue that runs late
    does not push later arrivals back (``late_ms`` says how late the client was, at worst). Each job
    carries ``time.time()`` taken just before its enqueue and, first thing, pushes how long after
    that it started onto a Redis list with its own client (its one I/O). The client collects the
    list at the end, so it never waits for a job between arrivals.
    """
    await peer.open()
    try:
        with log.open("wb") as sink:
            worker = _start_worker(peer, sink)
        try:
            for _ in range(STEADY_WARMUP):  # the worker is up and warm, then idle
                await peer.enqueue("pickup", time.time())
                if _redis().blpop([LATENCIES], timeout=120) is None:
                    raise TimeoutError(f"{peer.name}: a warm-up job did not start within 120 s")
            await asyncio.sleep(0.5)
            late = []
            t0 = time.perf_counter() + 0.01
            for i in range(samples):
                due = t0 + i * STEADY_INTERVAL
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                late.append(time.perf_counter() - due)
                await peer.enqueue("pickup", time.time())
            deadline = time.monotonic() + 60
            while _redis().llen(LATENCIES) < samples:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited ({worker.returncode})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{peer.name}: not every steady job started within 60 s")
                await asyncio.sleep(0.05)
            latencies = [float(v) * 1000 for v in _redis().lrange(LATENCIES, 0, -1)]
            _redis().delete(LATENCIES)
        finally:
            _stop_worker(peer, worker)
    finally:
        await peer.close()
    return {"peer": peer.name, "version": peer.version, "notes": peer.notes, "samples": samples,
            "late_ms": round(max(late) * 1000, 3), "latencies_ms": [round(v, 4) for v in latencies],
            **_percentiles(latencies)}


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

        with log.open("wb") as sink:
            worker = _start_worker(peer, sink)
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
            _stop_worker(peer, worker)
    finally:
        await peer.close()
    return {
        "peer": peer.name, "version": peer.version, "notes": peer.notes, "jobs": jobs,
        "samples": samples,
        "enqueue_jobs_per_s": round(enqueue_rate, 1),
        "drain_jobs_per_s": round(jobs / (ended - began), 1),
        **_percentiles(latencies),
    }


def main(peer: Peer) -> None:
    """``python -m benchmarks.peers.<name> JOBS SAMPLES`` (or ``--steady SAMPLES``): print JSON."""
    log = Path(os.environ.get("BENCH_WORKER_LOG", f"/tmp/bench-{peer.name}.log"))
    if len(sys.argv) > 1 and sys.argv[1] == "--steady":
        samples = int(sys.argv[2]) if len(sys.argv) > 2 else 500
        print(json.dumps(asyncio.run(steady(peer, samples, log))))
        return
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    print(json.dumps(asyncio.run(measure(peer, jobs, samples, log))))
