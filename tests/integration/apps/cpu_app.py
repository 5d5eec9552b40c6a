"""Module-level tasks for in-process workers: CPU-bound, thread-blocking and loop-blocking.

A ``cpu=True`` child finds its task by importing this module, so the tasks live at module level on
a queue that is never opened; a test registers the same functions on its own queue with
:func:`register`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from conveyor import Queue, Task

queue = Queue("memory://", name="cpu-app")


@queue.task(cpu=True)
def burn(seconds: float, pidfile: str | None = None) -> int:
    """Keep a CPU busy for ``seconds``, after writing this process id to ``pidfile``."""
    if pidfile:  # written whole, then renamed: a reader never sees it half-written
        part = Path(pidfile + ".part")
        part.write_text(str(os.getpid()))
        part.replace(pidfile)
    deadline = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return os.getpid()


@queue.task
def nap(seconds: float) -> float:
    """Block a thread for ``seconds`` (a plain ``def`` runs in the worker's thread pool)."""
    time.sleep(seconds)
    return seconds


@queue.task
async def hog(seconds: float) -> float:
    """Block the event loop for ``seconds``: the mistake the watchdog must name."""
    time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop on purpose
    return seconds


def register(target: Queue) -> dict[str, Task[..., object]]:
    """Register this module's tasks on ``target`` under their own names."""
    return {t.name: target.task(name=t.name, cpu=t.cpu)(t.fn) for t in (burn, nap, hog)}
