"""The one contract every storage engine implements.

A backend stores jobs and moves them between statuses, atomically; it never decides anything
(retry policy, serialization, validation and logging live above it). One verb per transition:

```
enqueue ─► queued/scheduled ─claim─► running ─complete─► succeeded
                                        │ ─fail──────► scheduled (retry_at) | failed | dead
                                        │ ─release───► queued (shutdown; attempt not counted)
                                        │ ─recover───► queued (lease expired; worker lost)
                                        └ ─cancel────► cancelled (with the lease token: the worker
                                                       confirms a cancel or timeout it carried out)
cancel (no token): queued/scheduled ─► cancelled; running ─► cancel_requested stays running
retry (by hand): failed/dead/cancelled ─► queued
```

Rules every backend keeps (the conformance suite checks them):

* **Order**: claim takes the highest ``priority`` first, then enqueue order (a per-backend
  sequence, never the wall clock of different processes).
* **Lanes**: jobs with the same ``(queue, key)`` run one at a time in enqueue order. Only the
  earliest unfinished job of a lane may be claimed; a job waiting for a retry keeps the lane.
* **Unique**: enqueueing a job whose ``(queue, unique)`` matches a queued, scheduled or running
  job writes nothing and returns the existing record.
* **Supersede**: a new job with ``supersede=True`` cancels the queued/scheduled jobs of its lane
  that have never started (``attempts == 0``).
* **Fencing**: every transition of a running job names its lease token; a token that is not the
  current one (the lease expired and another worker claimed the job) changes nothing and returns
  False.
* **Events**: every status change and progress report appends an :class:`Event` with a per-job
  increasing ``seq``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.errors import ConfigError
from conveyor.model import ErrorInfo, Event, JobRecord, JobStatus

__all__ = ["Ack", "Backend", "JobFilter", "Lease", "RenewResult", "malformed_job", "worker_lost"]


def worker_lost(times: int) -> ErrorInfo:
    """The error stored on a job given up after its lease expired ``times`` times."""
    return {
        "type": "WorkerLost",
        "message": (
            f"the job's lease expired {times} times: its worker died or stopped responding each "
            "time it ran this job (a crash, an out-of-memory kill, or an event loop blocked past "
            "the lease); it is dead so it cannot take down more workers. Retry it by hand once fixed."
        ),
        "traceback": "",
    }


def malformed_job(exc: Exception) -> ErrorInfo:
    """The error stored on a claimed job whose stored record cannot be decoded."""
    return {
        "type": "MalformedJob",
        "message": f"the stored job cannot be decoded: {type(exc).__name__}: {exc}",
        "traceback": "",
    }


@dataclass(slots=True, frozen=True)
class Lease:
    """A running attempt, as named by the worker holding it."""

    job_id: str
    token: str


@dataclass(slots=True, frozen=True)
class Ack:
    """A successful attempt and its JSON result."""

    job_id: str
    token: str
    result: Any


@dataclass(slots=True, frozen=True)
class RenewResult:
    """What ``renew`` learnt: leases no longer held, and jobs someone asked to cancel."""

    lost: frozenset[str]
    cancel_requested: frozenset[str]


@dataclass(slots=True, frozen=True)
class JobFilter:
    """Which jobs ``list_jobs`` returns: newest first, ``limit`` at most, after ``offset``."""

    queue: str | None = None
    status: JobStatus | None = None
    task: str | None = None
    limit: int = 50
    offset: int = 0


class Backend(ABC):
    """A storage engine for jobs. One instance per :class:`conveyor.Queue`; async-safe."""

    #: how often the polling defaults below look again, in seconds
    poll_interval: float = 0.05

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.safe_url}>"

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs and reprs."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))

    # -- lifecycle -------------------------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    # -- transitions -----------------------------------------------------------------------
    @abstractmethod
    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        """Store new jobs atomically, in order; return the stored records.

        A job whose ``scheduled_for`` is in the future is stored as ``scheduled``. For a job whose
        ``unique`` matches an active job the existing record is returned instead and nothing is
        written for it; so too for a job whose id is stored already (the same batch sent again
        after a lost reply, or an id twice in one batch). ``supersede`` is applied before the new
        job is stored.
        """

    async def enqueue_in(self, connection: object, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        """Store new jobs as ``enqueue`` does, inside the open transaction of ``connection``, a
        connection of the application (``connection=``): they exist only once it commits.

        Only backends that share the application's database can; the others raise ConfigError.
        """
        raise ConfigError(
            f"connection= stores jobs inside your own database transaction, which only a "
            f"PostgreSQL queue can; this queue is {self.safe_url}"
        )

    @abstractmethod
    async def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[JobRecord]:
        """Take up to ``limit`` due jobs for ``worker``, in order, each with a fresh lease.

        Claimed jobs become ``running``, ``attempts`` goes up by one, ``started_at`` is set, and
        each returned record carries its ``lease_token`` and ``lease_expires_at`` (now + ``lease``
        seconds by the backend's clock).
        """

    @abstractmethod
    async def renew(self, leases: Sequence[Lease], lease: float) -> RenewResult:
        """Extend the leases still held by ``lease`` seconds; report lost ones and cancel requests."""

    @abstractmethod
    async def complete(self, acks: Sequence[Ack]) -> list[bool]:
        """Mark attempts succeeded with their results. One bool per ack: False if fenced out."""

    @abstractmethod
    async def fail(
        self, lease: Lease, error: ErrorInfo, *, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        """End a failed attempt: again at ``retry_at``, else ``dead`` or ``failed``. False if fenced."""

    @abstractmethod
    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        """Put running jobs back as queued without counting the attempt (graceful shutdown)."""

    @abstractmethod
    async def cancel(
        self, job_id: str, *, lease: Lease | None = None, error: ErrorInfo | None = None
    ) -> JobRecord | None:
        """Cancel a job; return its record afterwards, or None if there is no such job.

        Without a lease: a queued/scheduled job becomes ``cancelled``; a running job gets
        ``cancel_requested`` and stays running until its worker stops it; a finished job is left
        as it is. With a lease (the worker confirming): the running job becomes ``cancelled``.
        """

    @abstractmethod
    async def retry(self, job_id: str) -> JobRecord | None:
        """Put a failed, dead or cancelled job back in its queue by hand (attempts start over)."""

    @abstractmethod
    async def recover(self, max_lost: int | None = None) -> list[str]:
        """Put running jobs whose lease has expired back as queued; return their ids.

        A job whose lease has now expired ``max_lost`` times (its worker died or hung each time:
        a job that crashes its workers) ends ``dead`` with a ``WorkerLost`` error instead, so it
        cannot take down worker after worker. None: no limit. A job asked to cancel ends
        ``cancelled``.
        """

    @abstractmethod
    async def progress(self, lease: Lease, fraction: float, message: str) -> bool:
        """Record a progress report of a running attempt. False if fenced."""

    async def purge(self, before: datetime) -> int:
        """Delete finished jobs (and their events) that finished before ``before``; return how many.

        Engines that expire finished jobs on their own (a TTL) keep the default, which does nothing.
        """
        return 0

    # -- reads -----------------------------------------------------------------------------
    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """One job, or None."""

    @abstractmethod
    async def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        """Jobs matching the filter, newest first."""

    @abstractmethod
    async def stats(self, queue: str | None = None) -> dict[str, int]:
        """How many jobs are in each status (every status present, zero when none)."""

    @abstractmethod
    async def events(self, job_id: str, after: int = 0) -> list[Event]:
        """The job's events with ``seq > after``, oldest first."""

    @abstractmethod
    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these running jobs someone asked to cancel."""

    # -- waiting ---------------------------------------------------------------------------
    async def wait_for_jobs(
        self, queues: Sequence[str], timeout: float, worker: str | None = None
    ) -> None:
        """Return when new work may be due in ``queues``, or after ``timeout`` seconds.

        ``worker`` is the worker that waits (the id its claims name), for engines that keep
        state per worker. The default polls; engines with push notifications override it.
        """
        await asyncio.sleep(min(timeout, self.poll_interval))

    async def wait_for_events(self, job_id: str, after: int, timeout: float) -> list[Event]:
        """Events with ``seq > after``; waits up to ``timeout`` seconds for the first one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await self.events(job_id, after)
            if found:
                return found
            left = deadline - loop.time()
            if left <= 0:
                return []
            await asyncio.sleep(min(left, self.poll_interval))

    async def retire(self, worker: str) -> None:  # noqa: B027 - optional hook
        """``worker`` claims nothing more (it is stopping).

        Engines that hand jobs straight to idle workers give back what they handed it; the
        default does nothing.
        """

    def deliver_to(self, worker: str, take: Callable[[JobRecord], bool] | None) -> None:  # noqa: B027
        """Hand jobs this engine claims for ``worker`` on its own straight to ``take``.

        Engines that claim for idle workers ahead of their ``claim()`` call (Redis hand-outs)
        call ``take(record)`` from the event loop as each arrives, which saves the worker a loop
        step and a ``claim()``; ``take`` returns False when the worker cannot start the job now,
        and the job then comes with its next ``claim()``. ``None`` stops it. The default pushes
        nothing.
        """

    async def watch_cancellations(
        self, callback: Callable[[str], None]
    ) -> Callable[[], None] | None:
        """Push cancel requests of running jobs: call ``callback(job_id)`` for each, from the loop.

        Return a function that stops the watching, or None when the engine cannot push (the
        default): the worker then polls ``cancel_requested`` instead.
        """
        return None

