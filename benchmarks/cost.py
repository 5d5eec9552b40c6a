"""What one job costs, in CPU time and round trips: a figure a busy machine barely moves.

    .venv/bin/python -m benchmarks.cost --jobs 20000                       # this checkout
    PYTHONPATH=/path/to/other/src .venv/bin/python -m benchmarks.cost ...   # another version

Drain throughput moves by 10-20 % between two runs on a shared two-core machine, so "no slower
than before" cannot be shown by timing a drain once. The CPU a worker process spends per job,
the CPU the Redis server spends per job, and the commands each job costs hardly move with the
load around them. This drains ``--jobs`` no-op jobs (enqueued in batches of 1,000 while one CLI
worker runs, ``--concurrency`` 100) on a fresh SQLite file and on a throwaway redis-server, and
prints per job: the worker's CPU (user + system, from ``/proc/<pid>/stat``), Redis's CPU
(``INFO cpu``), and the scripts the client and worker ran (``EVALSHA``). Run it for two versions (set
``PYTHONPATH`` to the other version's ``src``), alternating, to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _commands(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in client.info("commandstats").items()}


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _start_worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONVEYOR_URL": url,
           "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "benchmarks.bench_app:queue",
         "--concurrency", str(concurrency), "--log-level", "warning"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
    )


async def _drain(url: str, jobs: int, concurrency: int, raw: redis.Redis | None) -> dict[str, Any]:
    from benchmarks.bench_app import make_queue

    worker = _start_worker(url, concurrency)
    queue = make_queue(url)
    noop = queue.tasks["noop"]
    try:
        async with queue:
            await asyncio.sleep(2.0)  # the worker is up, and idle
            cpu0, t0 = cpu_seconds(worker.pid), time.perf_counter()
            server0 = _server_cpu(raw) if raw is not None else 0.0
            cmds0 = _commands(raw) if raw is not None else {}
            for start in range(0, jobs, 1000):
                await queue.enqueue_many([noop.prepare() for _ in range(min(1000, jobs - start))])
            while (await queue.stats()).get("succeeded", 0) < jobs:
                if worker.poll() is not None:
                    raise RuntimeError("the worker exited")
                await asyncio.sleep(0.02)
            took = time.perf_counter() - t0
            cpu = cpu_seconds(worker.pid) - cpu0
            out: dict[str, Any] = {"jobs": jobs, "jobs_per_s": round(jobs / took),
                                   "worker_cpu_us_per_job": round(cpu / jobs * 1e6, 1)}
            if raw is not None:
                out["redis_cpu_us_per_job"] = round((_server_cpu(raw) - server0) / jobs * 1e6, 1)
                cmds = _commands(raw)
                sent = {k: cmds.get(k, 0) - cmds0.get(k, 0) for k in cmds}
                out["scripts_per_job"] = round((sent.get("evalsha", 0) + sent.get("eval", 0)) / jobs, 3)
    finally:
        worker.terminate()
        worker.wait(60)
    return out


def main() -> int:
    from benchmarks.redis_bench import redis_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--targets", default="sqlite,redis")
    args = parser.parse_args()
    import conveyor

    results: dict[str, Any] = {"conveyor": str(Path(conveyor.__file__).parent)}
    targets = args.targets.split(",")
    if "sqlite" in targets:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/cost.db"
            results["sqlite"] = asyncio.run(_drain(url, args.jobs, args.concurrency, None))
    if "redis" in targets:
        with redis_server() as server:
            raw = redis.Redis(port=server.port, decode_responses=True)
            results["redis"] = asyncio.run(_drain(server.url(), args.jobs, args.concurrency, raw))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
