"""Module-level ``cpu=True`` tasks for the conformance suite.

A child process finds a cpu task by importing its module and looking up the function's name, so
the tasks live here at module level, registered on a queue of their own. A test registers the
same functions on its own queue with :func:`register`; the child resolves them back to this module.
"""

from __future__ import annotations

import os
import time

from conveyor import Context, Queue, Task

# never opened: it only gives the child process something to look the tasks up on
queue = Queue("memory://", name="cpu-tasks")


@queue.task(cpu=True)
def pid_and_square(x: int) -> list[int]:
    """Return the process id this ran in and ``x * x``."""
    return [os.getpid(), x * x]


@queue.task(cpu=True)
def spin(seconds: float, ctx: Context) -> str:
    """Report progress, then block the process for ``seconds``."""
    ctx.progress(0.5, "spinning")
    time.sleep(seconds)
    return "done"


def register(target: Queue) -> dict[str, Task[..., object]]:
    """Register this module's cpu tasks on ``target``, under their own names."""
    return {t.name: target.task(cpu=True, name=t.name)(t.fn) for t in (pid_and_square, spin)}
