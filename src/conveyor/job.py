"""The Job handle: a job's id, and the questions you can ask about it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conveyor.errors import JobCancelled, JobFailed, JobNotFound, JobTimeout
from conveyor.model import Event, JobRecord, JobStatus

if TYPE_CHECKING:
    from conveyor.queue import Queue
    from conveyor.task import Task

__all__ = ["Job"]

R = TypeVar("R")


class Job(Generic[R]):
    """A handle on a stored job. Cheap to create; every method asks the backend."""

    __slots__ = ("id", "queue", "task")

    def __init__(self, queue: Queue, job_id: str, task: Task[Any, R] | None = None) -> None:
        self.queue = queue
        self.id = job_id
        self.task = task

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    async def info(self) -> JobRecord:
        """The stored record. Raises :class:`JobNotFound` for an unknown id."""
        record = await (await self.queue._backend()).get(self.id)
        if record is None:
            raise JobNotFound(self.id)
        return record

    async def status(self) -> JobStatus:
        """The current status."""
        return (await self.info()).status

    async def cancel(self) -> JobStatus:
        """Cancel the job: a waiting job never runs, a running one is stopped. Returns the status.

        For a running job the status is still ``running`` right after this call; it becomes
        ``cancelled`` once its worker has stopped it (see ``result()`` or ``events()``).
        """
        record = await (await self.queue._backend()).cancel(self.id)
        if record is None:
            raise JobNotFound(self.id)
        return record.status

    async def retry(self) -> JobStatus:
        """Put a failed, dead or cancelled job back in its queue; attempts start over."""
        record = await (await self.queue._backend()).retry(self.id)
        if record is None:
            raise JobNotFound(self.id)
        return record.status

    async def events(self, after: int = 0) -> AsyncIterator[Event]:
        """Every event after ``after`` (past ones first), live, until the job is finished."""
        async for event in self.follow(after, idle=1.0):
            if event is not None:
                yield event

    async def follow(self, after: int = 0, *, idle: float = 1.0) -> AsyncIterator[Event | None]:
        """Like ``events()``, and ``None`` after every ``idle`` seconds without an event.

        The ``None`` lets a stream send keep-alives (the SSE endpoint uses it).
        """
        backend = await self.queue._backend()
        if await backend.get(self.id) is None:
            raise JobNotFound(self.id)
        while True:
            batch = await backend.wait_for_events(self.id, after, timeout=idle)
            for event in batch:
                after = event.seq
                yield event
            if batch:
                # a terminal event ends it only if it is the job's last word: a job retried by
                # hand has an old verdict in its history, and lives on after it
                if batch[-1].terminal and await self.finished(after):
                    return
                continue
            record = await backend.get(self.id)
            if record is None or record.status.terminal:
                # finished (or deleted) with no terminal event left in the history (pruned):
                # give what is there and stop, rather than wait for an event that will not come
                for event in await backend.events(self.id, after):
                    yield event
                return
            yield None

    async def finished(self, after: int = 0) -> bool:
        """True when the job is over (or gone) and nothing happened to it after event ``after``."""
        backend = await self.queue._backend()
        record = await backend.get(self.id)
        return record is None or (
            record.status.terminal and not await backend.events(self.id, after)
        )

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the job to finish and return its result.

        Raises :class:`JobFailed` (failed or dead), :class:`JobCancelled`, or :class:`JobTimeout`
        when ``timeout`` seconds pass first (the job itself goes on).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        backend = await self.queue._backend()
        after = 0
        while True:
            record = await self.info()
            if record.status.terminal:
                return self._outcome(record)
            left = 5.0 if deadline is None else deadline - loop.time()
            if left <= 0:
                raise JobTimeout(
                    f"job {self.id} is still {record.status.value} after {timeout} s",
                    job_id=self.id,
                )
            # returns at once with any events after `after`, else on the next one or the timeout
            batch = await backend.wait_for_events(self.id, after, timeout=min(left, 5.0))
            if batch:
                after = batch[-1].seq

    def _outcome(self, record: JobRecord) -> R:
        if record.status is JobStatus.SUCCEEDED:
            if self.task is not None:
                return self.task.signature.decode_result(record.result)  # type: ignore[no-any-return]
            return record.result  # type: ignore[no-any-return]
        if record.status is JobStatus.CANCELLED:
            raise JobCancelled(f"job {self.id} ({record.task}) was cancelled", job_id=self.id)
        error = dict(record.error or {})
        raise JobFailed(
            f"job {self.id} ({record.task}) {record.status.value} after {record.attempts} "
            f"attempt(s): {error.get('type', 'Error')}: {error.get('message', '')}",
            job_id=self.id, error=error, status=record.status.value,
        )
