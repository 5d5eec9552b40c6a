"""``memory://``: jobs in this process's memory, for tests and examples. Nothing survives a restart."""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from conveyor.backends.base import Ack, Backend, JobFilter, Lease, RenewResult, worker_lost
from conveyor.model import (
    ErrorInfo,
    Event,
    EventType,
    JobRecord,
    JobStatus,
    new_token,
    utcnow,
)

__all__ = ["MemoryBackend"]

_WAITING = (JobStatus.QUEUED, JobStatus.SCHEDULED)


class MemoryBackend(Backend):
    """Everything in dicts and heaps; every verb runs to completion without awaiting, so atomically."""

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self._jobs: dict[str, JobRecord] = {}
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        # per queue: (-priority, seq, id) of jobs that may be claimed once due
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        # (due timestamp, seq, id) of scheduled lane heads
        self._timers: list[tuple[float, int, str]] = []
        self._lanes: dict[tuple[str, str], deque[str]] = {}
        self._unique: dict[tuple[str, str], str] = {}
        self._running: set[str] = set()
        self._lost: dict[str, int] = {}  # how often each job's lease expired
        self._events: dict[str, list[Event]] = {}
        self._work = asyncio.Event()
        self._event_waiters: dict[str, list[asyncio.Future[None]]] = {}

    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to release; the jobs stay until the object is dropped."""

    # -- helpers ---------------------------------------------------------------------------
    def _emit(self, job: JobRecord, type_: EventType, data: dict[str, object]) -> None:
        events = self._events.setdefault(job.id, [])
        events.append(Event(job.id, len(events) + 1, type_, utcnow(), dict(data)))
        for fut in self._event_waiters.pop(job.id, []):
            if not fut.done():
                fut.set_result(None)

    def _status_event(self, job: JobRecord, **extra: object) -> None:
        self._emit(job, "status", {"status": job.status.value, "attempt": job.attempts, **extra})

    def _is_lane_head(self, job: JobRecord) -> bool:
        if job.key is None:
            return True
        lane = self._lanes.get((job.queue, job.key))
        return bool(lane) and lane[0] == job.id  # type: ignore[index]

    def _make_available(self, job: JobRecord) -> None:
        """Index a waiting lane head so claim can find it."""
        if job.status not in _WAITING or not self._is_lane_head(job):
            return
        seq = self._seq[job.id]
        if job.status is JobStatus.SCHEDULED and job.scheduled_for is not None:
            heapq.heappush(self._timers, (job.scheduled_for.timestamp(), seq, job.id))
        else:
            heapq.heappush(self._ready.setdefault(job.queue, []), (-job.priority, seq, job.id))
        self._work.set()

    def _leave(self, job: JobRecord) -> None:
        """A job reached a final status: free its unique value and hand its lane on."""
        self._running.discard(job.id)
        if job.unique is not None and self._unique.get((job.queue, job.unique)) == job.id:
            del self._unique[(job.queue, job.unique)]
        if job.key is None:
            return
        lane_id = (job.queue, job.key)
        lane = self._lanes.get(lane_id)
        if lane is None or job.id not in lane:
            return
        was_head = lane[0] == job.id
        lane.remove(job.id)
        if not lane:
            del self._lanes[lane_id]
        elif was_head:
            self._make_available(self._jobs[lane[0]])

    def _finish(self, job: JobRecord, status: JobStatus, now: datetime) -> None:
        job.status = status
        job.finished_at = now
        job.lease_token = None
        job.lease_expires_at = None
        self._leave(job)

    def _held(self, lease: Lease) -> JobRecord | None:
        job = self._jobs.get(lease.job_id)
        if job is None or job.status is not JobStatus.RUNNING or job.lease_token != lease.token:
            return None
        return job

    # -- transitions -----------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        now = utcnow()
        out: list[JobRecord] = []
        for new in jobs:
            if new.id in self._jobs:  # stored already (a call sent again): that job, unchanged
                out.append(replace(self._jobs[new.id]))
                continue
            if new.unique is not None:
                existing_id = self._unique.get((new.queue, new.unique))
                if existing_id is not None:
                    out.append(replace(self._jobs[existing_id]))
                    continue
            if new.supersede and new.key is not None:
                for old_id in list(self._lanes.get((new.queue, new.key), ())):
                    old = self._jobs[old_id]
                    if old.status in _WAITING and old.attempts == 0:
                        self._finish(old, JobStatus.CANCELLED, now)
                        self._status_event(old, reason="superseded")
            # meta is stored as a copy of its own: the caller's mapping is the caller's
            job = replace(new, supersede=False, meta=dict(new.meta) if new.meta else new.meta)
            due = job.scheduled_for is not None and job.scheduled_for > now
            job.status = JobStatus.SCHEDULED if due else JobStatus.QUEUED
            self._next_seq += 1
            self._seq[job.id] = self._next_seq
            self._jobs[job.id] = job
            if job.unique is not None:
                self._unique[(job.queue, job.unique)] = job.id
            if job.key is not None:
                self._lanes.setdefault((job.queue, job.key), deque()).append(job.id)
            self._status_event(job)
            self._make_available(job)
            out.append(replace(job))
        return out

    def _promote_due(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, seq, job_id = heapq.heappop(self._timers)
            job = self._jobs.get(job_id)
            if (
                job is not None and job.status is JobStatus.SCHEDULED and self._seq[job_id] == seq
                and self._is_lane_head(job)
            ):
                heapq.heappush(self._ready.setdefault(job.queue, []), (-job.priority, seq, job_id))

    async def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[JobRecord]:
        now = utcnow()
        self._promote_due(now.timestamp())
        out: list[JobRecord] = []
        heaps = [self._ready[q] for q in queues if q in self._ready]
        while len(out) < limit:
            best = min((h for h in heaps if h), key=lambda h: h[0], default=None)
            if best is None:
                break
            _, seq, job_id = heapq.heappop(best)
            job = self._jobs.get(job_id)
            # an entry is stale when its job moved on; a job retried by hand got a new seq (its
            # place at the back), so an entry with its old seq must not bring it back to the front
            if (
                job is None or job.status not in _WAITING or self._seq[job_id] != seq
                or not self._is_lane_head(job)
            ):
                continue
            if job.status is JobStatus.SCHEDULED and (job.scheduled_for or now) > now:
                continue  # re-scheduled later; its timer entry brings it back
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.started_at = now
            job.finished_at = None
            job.worker = worker
            job.cancel_requested = False
            job.lease_token = new_token()
            job.lease_expires_at = now + timedelta(seconds=lease)
            self._running.add(job.id)
            self._status_event(job, worker=worker)
            out.append(replace(job))
        return out

    async def renew(self, leases: Sequence[Lease], lease: float) -> RenewResult:
        now = utcnow()
        lost: set[str] = set()
        cancel: set[str] = set()
        for held in leases:
            job = self._held(held)
            if job is None:
                lost.add(held.job_id)
                continue
            job.lease_expires_at = now + timedelta(seconds=lease)
            if job.cancel_requested:
                cancel.add(job.id)
        return RenewResult(frozenset(lost), frozenset(cancel))

    async def complete(self, acks: Sequence[Ack]) -> list[bool]:
        now = utcnow()
        done: list[bool] = []
        for ack in acks:
            job = self._held(Lease(ack.job_id, ack.token))
            if job is None:
                done.append(False)
                continue
            job.result = ack.result
            job.error = None
            self._finish(job, JobStatus.SUCCEEDED, now)
            self._status_event(job)
            done.append(True)
        return done

    async def fail(
        self, lease: Lease, error: ErrorInfo, *, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        job = self._held(lease)
        if job is None:
            return False
        now = utcnow()
        job.error = error
        if retry_at is None or job.cancel_requested:
            # a job asked to cancel while its attempt failed is not tried again
            final = JobStatus.CANCELLED if retry_at is not None else (
                JobStatus.DEAD if dead else JobStatus.FAILED
            )
            self._finish(job, final, now)
            self._status_event(job, error=dict(error))
            return True
        self._running.discard(job.id)
        job.lease_token = None
        job.lease_expires_at = None
        job.scheduled_for = retry_at
        job.status = JobStatus.SCHEDULED if retry_at > now else JobStatus.QUEUED
        self._status_event(job, error=dict(error))
        self._make_available(job)
        return True

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        out: list[bool] = []
        for held in leases:
            job = self._held(held)
            if job is None:
                out.append(False)
                continue
            self._requeue(job, reason="released")
            job.attempts -= 1
            out.append(True)
        return out

    def _requeue(self, job: JobRecord, *, reason: str) -> None:
        if job.status is JobStatus.RUNNING and job.cancel_requested:
            # someone asked to cancel it: the cancel completes instead of a second run
            self._finish(job, JobStatus.CANCELLED, utcnow())
            self._status_event(job, reason=reason)
            return
        self._running.discard(job.id)
        job.status = JobStatus.QUEUED
        job.lease_token = None
        job.lease_expires_at = None
        job.worker = None
        job.scheduled_for = None
        self._status_event(job, reason=reason)
        self._make_available(job)

    async def cancel(
        self, job_id: str, *, lease: Lease | None = None, error: ErrorInfo | None = None
    ) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        now = utcnow()
        if lease is not None:
            if self._held(lease) is not None:
                if error is not None:
                    job.error = error
                self._finish(job, JobStatus.CANCELLED, now)
                self._status_event(job)
        elif job.status in _WAITING:
            self._finish(job, JobStatus.CANCELLED, now)
            self._status_event(job)
        elif job.status is JobStatus.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            self._work.set()
        return replace(job)

    async def retry(self, job_id: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status not in (JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED):
            return replace(job)
        self._next_seq += 1
        self._seq[job.id] = self._next_seq
        job.attempts = 0
        self._lost.pop(job.id, None)
        job.finished_at = None
        job.started_at = None
        job.cancel_requested = False
        if job.unique is not None and self._unique.setdefault((job.queue, job.unique), job.id) != job.id:
            job.unique = None  # an active job holds the value now: this one gives it up
        if job.key is not None:
            self._lanes.setdefault((job.queue, job.key), deque()).append(job.id)
        self._requeue(job, reason="retried")
        return replace(job)

    async def recover(self, max_lost: int | None = None) -> list[str]:
        now = utcnow()
        lost = [
            self._jobs[i] for i in self._running
            if (self._jobs[i].lease_expires_at or now) < now
        ]
        for job in lost:
            times = self._lost[job.id] = self._lost.get(job.id, 0) + 1
            if max_lost is not None and times >= max_lost and not job.cancel_requested:
                job.error = worker_lost(times)
                self._finish(job, JobStatus.DEAD, now)
                self._status_event(job, error=dict(job.error), reason="lease expired")
            else:
                self._requeue(job, reason="lease expired")
        return [job.id for job in lost]

    async def progress(self, lease: Lease, fraction: float, message: str) -> bool:
        job = self._held(lease)
        if job is None:
            return False
        job.progress = {"fraction": fraction, "message": message}
        self._emit(job, "progress", {"fraction": fraction, "message": message})
        return True

    async def purge(self, before: datetime) -> int:
        old = [
            job for job in self._jobs.values()
            if job.status.terminal and job.finished_at is not None and job.finished_at < before
        ]
        for job in old:
            del self._jobs[job.id]
            self._seq.pop(job.id, None)
            self._events.pop(job.id, None)
        return len(old)

    # -- reads -----------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        return None if job is None else replace(job)

    async def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        found = [
            job for job in self._jobs.values()
            if (flt.queue is None or job.queue == flt.queue)
            and (flt.status is None or job.status is flt.status)
            and (flt.task is None or job.task == flt.task)
        ]
        found.sort(key=lambda j: self._seq[j.id], reverse=True)
        return [replace(j) for j in found[flt.offset : flt.offset + flt.limit]]

    async def stats(self, queue: str | None = None) -> dict[str, int]:
        counts = {status.value: 0 for status in JobStatus}
        for job in self._jobs.values():
            if queue is None or job.queue == queue:
                counts[job.status.value] += 1
        return counts

    async def events(self, job_id: str, after: int = 0) -> list[Event]:
        return list(self._events.get(job_id, [])[after:])

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        return {i for i in job_ids if (j := self._jobs.get(i)) is not None and j.cancel_requested}

    # -- waiting ---------------------------------------------------------------------------
    async def wait_for_jobs(
        self, queues: Sequence[str], timeout: float, worker: str | None = None
    ) -> None:
        if self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - utcnow().timestamp()))
        if self._work.is_set():
            self._work.clear()
            return
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            return
        self._work.clear()

    async def wait_for_events(self, job_id: str, after: int, timeout: float) -> list[Event]:
        found = await self.events(job_id, after)
        if found or timeout <= 0:
            return found
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._event_waiters.setdefault(job_id, [])
        waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return []
        finally:
            # a waiter that timed out must not stay behind until the job's next event
            if fut in waiters:
                waiters.remove(fut)
            if not waiters and self._event_waiters.get(job_id) is waiters:
                del self._event_waiters[job_id]
        return await self.events(job_id, after)
