"""Does a worker's memory stay flat? Its RSS over a long run of no-op jobs.

``measure_soak`` (``run.py --soak N``) starts one CLI worker process, keeps its queue fed (never
more than 20,000 jobs ahead of it) until it has finished ``N`` jobs, and reads the worker's
``VmRSS`` from ``/proc/<pid>/status`` as the finished count passes 5 %, 25 %, 50 % and 100 % of
``N`` (50k, 250k, 500k and 1M for the default million). The goal: RSS at the end within 10 % of
RSS after the first 5 %, once start-up allocations and caches have settled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from benchmarks.bench_app import make_queue

AHEAD = 20_000  # jobs queued ahead of the worker at most
BATCH = 1_000
MARKS = (0.05, 0.25, 0.5, 1.0)
RSS_GOAL = 1.10  # RSS at the end / RSS at the first mark


def vm_rss_kb(pid: int) -> int:
    """The process's resident set size in kB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def measure_soak(url: str, n: int,
                       worker: Callable[[], AbstractAsyncContextManager[Any]]) -> dict[str, float]:
    """RSS (MB) of one worker process at each mark, and the last mark's ratio to the first."""
    queue = make_queue(url)
    noop = queue.tasks["noop"]
    marks = [max(1, int(n * f)) for f in MARKS]
    rss: dict[int, int] = {}
    enqueued = 0
    async with queue, worker() as proc:
        while len(rss) < len(marks):
            done = (await queue.stats())["succeeded"]
            for mark in marks:
                if mark not in rss and done >= mark:
                    rss[mark] = vm_rss_kb(proc.pid)
            if proc.returncode is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}")
            if enqueued < n and enqueued - done < AHEAD:
                while enqueued < n and enqueued - done < AHEAD:
                    size = min(BATCH, n - enqueued)
                    await queue.enqueue_many([noop.prepare() for _ in range(size)])
                    enqueued += size
            else:
                await asyncio.sleep(0.1)
    out = {f"soak_rss_mb@{mark}": kb / 1024 for mark, kb in rss.items()}
    out["soak_rss_ratio"] = rss[marks[-1]] / rss[marks[0]]
    return out


def soak_rows(figures: dict[str, float]) -> list[tuple[str, str, str, str, str]]:
    """(figure, first mark, last mark, ratio, goal) rows for the report."""
    points = sorted((int(k.split("@")[1]), v) for k, v in figures.items() if k.startswith("soak_rss_mb@"))
    if not points:
        return []
    ratio = figures["soak_rss_ratio"]
    met = ratio <= RSS_GOAL
    return [(
        "worker RSS (MB) at " + ", ".join(f"{m:,}" for m, _ in points) + " jobs",
        f"{points[0][1]:.1f}", " → ".join(f"{v:.1f}" for _, v in points), f"{ratio:.2f}x",
        f"[{'green' if met else 'bold red'}]{'met' if met else 'MISSED'} (<= {RSS_GOAL}x)[/]",
    )]
