"""Module-level ``cpu=True`` tasks for the conformance suite.

A child process finds a cpu task by importing its module and looking up the function's name, so
the tasks live here at module level, registered on a queue of their own. A test registers the
same functions on its own queue with :func:`register`; the child resolves them back to this module.
"""

from __future__ import annotations

import os
import time
from typing import Any

from conveyor import Context, Queue, Task

# never opened: it only gives the child process something to look the tasks up on
queue = Queue("memory://", name="cpu-tasks")


@queue.task(cpu=True)
def pid_and_square(x: int) -> list[int]:
    """Return the process id this ran in and ``x * x``; refuse a negative ``x``."""
    if x < 0:
        raise ValueError("x must not be negative")
    return [os.getpid(), x * x]


@queue.task(cpu=True)
def spin(seconds: float, ctx: Context) -> str:
    """Report progress (the message is this process's id), then block for ``seconds``."""
    ctx.progress(0.5, str(os.getpid()))
    time.sleep(seconds)
    return "done"


def register(target: Queue) -> dict[str, Task[..., Any]]:
    """Register this module's cpu tasks on ``target``, under their own names."""
    return {t.name: target.task(cpu=True, name=t.name)(t.fn) for t in (pid_and_square, spin)}
