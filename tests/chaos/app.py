"""The app the chaos workers run: ``conveyor worker tests.chaos.app:queue``.

Three tasks, one per executor (``async def`` on the loop, ``def`` in a thread, ``cpu=True`` in a
child process), with the same arguments and the same plan: what attempt ``a`` of a job does is fixed
by its arguments, so the checker knows what each attempt should have done:

- ``a in hang``: sleep ``hang_for`` seconds (longer than the job's timeout): the attempt times out;
- otherwise work for ``work`` seconds, then ``a in fail``: raise :class:`ChaosFailure`;
- otherwise return ``"<n>/<a>/<pid>"`` (which execution produced a stored result).

Every execution appends a start line and an end line to ``$CHAOS_JOURNAL`` (see ``journal.py``).
The store is ``$CONVEYOR_URL``; the cpu task lives at module level because a child process finds it
by importing this module.
"""

from __future__ import annotations

import asyncio
import os
import time

from conveyor import Context, Queue, Settings

from .journal import append_line, stamp

__all__ = ["QUEUE_NAME", "SETTINGS", "ChaosFailure", "queue"]

QUEUE_NAME = "chaos"

#: a short lease so the jobs of killed and stopped workers come back within the run; a short grace
#: so SIGTERMed workers exit soon; recover often so a lost lease is noticed at once
SETTINGS = Settings(
    lease=2.0, grace=3.0, recover_interval=0.5, cancel_poll=0.1, purge_interval=3600.0,
)

queue = Queue(name=QUEUE_NAME, settings=SETTINGS)


class ChaosFailure(Exception):
    """The failure a job's plan asks for on some attempts."""


def _journal() -> str:
    return os.environ["CHAOS_JOURNAL"]


def _start(ctx: Context, lane: str, kind: str) -> None:
    mono, wall = stamp()
    append_line(_journal(), " ".join([
        "S", ctx.job_id, str(ctx.attempt), str(os.getpid()), str(os.getppid()), mono, wall,
        lane or "-", kind,
    ]))


def _end(ctx: Context, lane: str, outcome: str, value: str | None) -> None:
    mono, wall = stamp()
    append_line(_journal(), " ".join([
        "E", ctx.job_id, str(ctx.attempt), str(os.getpid()), str(os.getppid()), mono, wall,
        lane or "-", outcome, value or "-",
    ]))


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, ChaosFailure):
        return "fail"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"error:{type(exc).__name__}"


def _result(n: int, ctx: Context) -> str:
    return f"{n}/{ctx.attempt}/{os.getpid()}"


@queue.task(name="chaos_async")
async def chaos_async(
    ctx: Context, n: int, lane: str, work: float, fail: list[int], hang: list[int], hang_for: float,
) -> str:
    """An ``async def`` job that follows its plan."""
    _start(ctx, lane, "async")
    value: str | None = None
    exc: BaseException | None = None
    try:
        await asyncio.sleep(hang_for if ctx.attempt in hang else work)
        if ctx.attempt in fail:
            raise ChaosFailure(f"job {n}: planned failure of attempt {ctx.attempt}")
        value = _result(n, ctx)
        return value
    except BaseException as caught:
        exc = caught
        raise
    finally:
        _end(ctx, lane, _outcome(exc), value)


@queue.task(name="chaos_def")
def chaos_def(
    ctx: Context, n: int, lane: str, work: float, fail: list[int], hang: list[int], hang_for: float,
) -> str:
    """A ``def`` job (thread pool) that follows its plan; a hanging attempt ignores ``ctx``."""
    _start(ctx, lane, "def")
    value: str | None = None
    exc: BaseException | None = None
    try:
        time.sleep(hang_for if ctx.attempt in hang else work)
        if ctx.attempt in fail:
            raise ChaosFailure(f"job {n}: planned failure of attempt {ctx.attempt}")
        value = _result(n, ctx)
        return value
    except BaseException as caught:
        exc = caught
        raise
    finally:
        _end(ctx, lane, _outcome(exc), value)


@queue.task(name="chaos_cpu", cpu=True)
def chaos_cpu(
    ctx: Context, n: int, lane: str, work: float, fail: list[int], hang: list[int], hang_for: float,
) -> str:
    """A ``cpu=True`` job (child process) that follows its plan: a little spinning, then sleep."""
    _start(ctx, lane, "cpu")
    value: str | None = None
    exc: BaseException | None = None
    try:
        seconds = hang_for if ctx.attempt in hang else work
        deadline = time.monotonic() + min(seconds, 0.02)
        while time.monotonic() < deadline:
            pass
        time.sleep(max(0.0, seconds - 0.02))
        if ctx.attempt in fail:
            raise ChaosFailure(f"job {n}: planned failure of attempt {ctx.attempt}")
        value = _result(n, ctx)
        return value
    except BaseException as caught:
        exc = caught
        raise
    finally:
        _end(ctx, lane, _outcome(exc), value)
