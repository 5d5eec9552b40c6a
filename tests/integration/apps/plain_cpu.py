"""A module-level function registered as a cpu task without the decorator.

``queue.task(cpu=True)(square)`` leaves ``square`` in this module as the plain function (not a
Task): the child process must still find and run it.
"""

from __future__ import annotations

import os

from conveyor import Context


def square(x: int, ctx: Context) -> list[int]:
    """Report progress, then return ``[x * x, the process id]``."""
    ctx.progress(0.5, "squaring")
    return [x * x, os.getpid()]
