"""Middleware: hooks around enqueue (the producer side) and around each attempt of a job (the worker).

```python
from conveyor import Queue
from conveyor.middleware import Middleware

class Tenant(Middleware):
    async def enqueue(self, jobs, call_next):
        for job in jobs:                       # producer side: stamp each job
            job.meta = {**job.meta, "tenant": current_tenant()}
        return await call_next(jobs)

    def before_attempt(self, job, ctx):        # worker side: ctx.meta["tenant"] is there
        ...

queue = Queue(middleware=[Tenant()])
```

Every hook has a default that does nothing, so a middleware overrides only what it needs.

**Order.** ``Queue(middleware=[a, b])``: ``a`` is the outermost. ``enqueue`` and ``call`` nest like
an onion (``a`` calls into ``b``, which calls into the store or the task); ``startup`` and
``before_attempt`` run ``a`` then ``b``; ``shutdown`` and the end-of-attempt hooks run ``b``
then ``a``. Conveyor's own FastAPI dependency resolution (tasks with ``Depends``) is a
middleware too, always the innermost ``call``, so the others see dependencies being resolved.

**One end per attempt.** Every attempt whose ``before_attempt`` ran gets exactly one end:
``after_success``, or ``after_failure`` (then ``on_dead`` when the job is now dead), or
``after_interrupt`` (cancelled while running, put back at shutdown, or its lease lost). A timeout
is a failure. End hooks run once the worker has decided the outcome, before it is stored.

**Errors.**

* ``enqueue`` raising: the enqueue fails with that error; raised before ``call_next``,
  nothing is written.
* ``before_attempt`` or ``call`` raising: that attempt fails with the error, exactly as if the
  task had raised it (stored, retried by the task's policy); a ``before_attempt`` that raised
  skips the task's body, and the later middlewares' ``before_attempt`` (and end hooks).
* an end hook (``after_*``, ``on_dead``) raising: logged with its traceback and ignored; the
  job's outcome stands and the other middlewares' hooks still run.
* ``startup`` raising: the worker does not start (:class:`~conveyor.errors.StartupError`) and
  claims nothing; the middlewares started before it are shut down. ``shutdown`` raising: logged.

The end-of-attempt hooks are plain functions called on the worker's event loop, inside the
attempt's own asyncio task (so a ``contextvars`` value set in ``before_attempt`` is seen by an
``async def`` task, and is copied into the thread of a ``def`` task): keep them quick, they are
on every job's path. Keep per-attempt state keyed by ``ctx`` (one :class:`Context` per attempt).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from conveyor.context import Context
from conveyor.model import ErrorInfo, JobRecord

if TYPE_CHECKING:
    from conveyor.worker import Worker

__all__ = ["CallNext", "EnqueueNext", "InterruptReason", "Middleware", "call_through", "overrides"]

#: stores the jobs (or calls the next middleware); returns the stored records
EnqueueNext = Callable[[list[JobRecord]], Awaitable[list[JobRecord]]]
#: runs the task (or the next middleware); keyword arguments fill the task's injected
#: parameters by name (what conveyor's ``Depends`` middleware resolves)
CallNext = Callable[..., Awaitable[Any]]
#: why an attempt ended without an outcome of its own
InterruptReason = Literal["cancel", "shutdown", "lost"]


class Middleware:
    """Base class of middlewares: override the hooks you need (see the module docs for order)."""

    # -- producer side ---------------------------------------------------------------------
    async def enqueue(self, jobs: list[JobRecord], call_next: EnqueueNext) -> list[JobRecord]:
        """Around storing a batch of new jobs (one ``enqueue`` is a batch of one).

        The records may be changed before ``call_next`` (set ``job.meta`` to a new dict); the
        jobs' ``meta`` is checked against its limits after every middleware had its turn. Returns
        the stored records (an existing job for a ``unique`` one).
        """
        return await call_next(jobs)

    # -- worker lifecycle ------------------------------------------------------------------
    async def startup(self, worker: Worker) -> None:
        """The worker is starting (its lifespan has started); nothing is claimed before this returns."""

    async def shutdown(self, worker: Worker) -> None:
        """The worker has stopped running jobs (its lifespan ends after this)."""

    # -- each attempt ----------------------------------------------------------------------
    def before_attempt(self, job: JobRecord, ctx: Context) -> None:
        """A claimed job is about to run (``job.attempts`` is this attempt's number)."""

    async def call(self, job: JobRecord, ctx: Context, call_next: CallNext) -> Any:
        """Around the task's body: ``return await call_next()``; may wrap it (a transaction...)."""
        return await call_next()

    def after_success(self, job: JobRecord, ctx: Context, result: Any) -> None:
        """The attempt returned ``result`` (as JSON); it is stored with the next batch of results."""

    def after_failure(
        self, job: JobRecord, ctx: Context, error: ErrorInfo, retry_at: datetime | None
    ) -> None:
        """The attempt raised (or timed out): ``error`` as stored; the retry decision is
        ``retry_at``, when the job runs again, or None when it will not (it is now ``failed``,
        or ``dead``, which ``on_dead`` then reports)."""

    def on_dead(self, job: JobRecord, ctx: Context, error: ErrorInfo) -> None:
        """The job's last attempt failed: it is dead (dead-lettered), with ``error``."""

    def after_interrupt(self, job: JobRecord, ctx: Context, reason: InterruptReason) -> None:
        """The attempt was stopped: ``cancel`` (a user's cancel), ``shutdown`` (put back without
        counting the attempt) or ``lost`` (its lease expired: another worker may have the job)."""


def overrides(mw: Middleware, hook: str) -> bool:
    """True when ``mw``'s class replaces the base class's ``hook``."""
    return getattr(type(mw), hook) is not getattr(Middleware, hook)


async def call_through(
    chain: Sequence[Middleware], job: JobRecord, ctx: Context,
    body: Callable[[Mapping[str, Any]], Awaitable[Any]],
) -> Any:
    """Run ``body`` inside each middleware's ``call``, the first outermost.

    ``body`` gets the keyword arguments the middlewares passed to ``call_next``, merged.
    """
    injected: dict[str, Any] = {}

    async def step(i: int, **values: Any) -> Any:
        injected.update(values)
        if i == len(chain):
            return await body(injected)
        return await chain[i].call(job, ctx, functools.partial(step, i + 1))

    return await step(0)
