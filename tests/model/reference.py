"""An executable reference model of the backend contract (``conveyor.backends.base``), in plain Python.

It holds what the contract promises and nothing a backend may choose for itself: statuses,
attempts, lease tokens (fencing), lanes, unique values, supersede, claim order, delays, cancel,
fail / release / recover (with lost-lease counting), retry by hand, progress, event numbering and
per-status counts. It never predicts timestamps or tokens: the test hands it the tokens the backend
drew, and decides for it which leases have certainly expired and which delays are certainly due.

Every method mirrors one verb of :class:`conveyor.backends.base.Backend` and returns what a correct
backend answers. ``touched`` collects the ids of jobs a verb changed, so the test can look at them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

QUEUED, SCHEDULED, RUNNING = "queued", "scheduled", "running"
SUCCEEDED, FAILED, CANCELLED, DEAD = "succeeded", "failed", "cancelled", "dead"
STATUSES = (QUEUED, SCHEDULED, RUNNING, SUCCEEDED, FAILED, CANCELLED, DEAD)
WAITING = frozenset({QUEUED, SCHEDULED})
ACTIVE = frozenset({QUEUED, SCHEDULED, RUNNING})
RETRYABLE = frozenset({FAILED, DEAD, CANCELLED})

#: ``error_type`` when the contract leaves the stored error open (the test does not compare it)
ANY_ERROR = "<any>"


@dataclass
class MJob:
    """One job as the contract sees it."""

    id: str
    task: str
    queue: str
    key: str | None
    unique: str | None
    priority: int
    status: str
    #: the claim order: enqueue order, renewed when retried by hand (back of the queue)
    order: int
    #: when a scheduled job becomes due: None = due now, ``float("inf")`` = never during a run,
    #: else a time by the test's clock (the test waits until it has certainly passed)
    due: float | None = None
    attempts: int = 0
    cancel_requested: bool = False
    token: str | None = None
    worker: str | None = None
    lost: int = 0
    result: Any = None
    has_result: bool = False
    error_type: str | None = None
    progress: tuple[float, str] | None = None
    #: (type, status or (fraction, message)) of every event, in order; seq = index + 1
    events: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class NewJob:
    """What the test enqueues (the JobRecord fields the contract looks at)."""

    id: str
    task: str
    queue: str
    key: str | None
    unique: str | None
    priority: int
    supersede: bool
    #: None (now), a past time, ``inf`` (far future) or a near future time by the test's clock
    due: float | None


class Model:
    """The job state machine of every backend, as the contract and docs/semantics.md state it."""

    def __init__(self) -> None:
        self.jobs: dict[str, MJob] = {}
        self._order = 0
        self.lanes: dict[tuple[str, str], list[str]] = {}
        self.unique: dict[tuple[str, str], str] = {}
        self.touched: set[str] = set()

    # -- helpers ---------------------------------------------------------------------------
    def _event(self, job: MJob, kind: str, data: Any) -> None:
        job.events.append((kind, data))
        self.touched.add(job.id)

    def _status(self, job: MJob, status: str) -> None:
        job.status = status
        self._event(job, "status", status)

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    def _head(self, job: MJob) -> bool:
        if job.key is None:
            return True
        lane = self.lanes.get((job.queue, job.key), [])
        return bool(lane) and lane[0] == job.id

    def _leave(self, job: MJob) -> None:
        """A job reached a final status: it frees its unique value and hands its lane on."""
        job.token = None
        if job.unique is not None and self.unique.get((job.queue, job.unique)) == job.id:
            del self.unique[(job.queue, job.unique)]
        if job.key is not None:
            lane = self.lanes.get((job.queue, job.key), [])
            if job.id in lane:
                lane.remove(job.id)
            if not lane:
                self.lanes.pop((job.queue, job.key), None)

    def _finish(self, job: MJob, status: str) -> None:
        self._status(job, status)
        self._leave(job)

    def held(self, job_id: str, token: str) -> MJob | None:
        """The running job ``token`` still holds the lease of, else None (fenced out)."""
        job = self.jobs.get(job_id)
        if job is None or job.status != RUNNING or job.token != token:
            return None
        return job

    def claimable(self, job: MJob, now: float) -> bool:
        """Waiting, due by ``now`` and the head of its lane."""
        if job.status not in WAITING or not self._head(job):
            return False
        return job.status == QUEUED or job.due is None or job.due <= now

    def _requeue(self, job: MJob) -> None:
        """Back without a verdict (release, expired lease); a cancel asked for completes instead."""
        job.token = None
        job.worker = None
        if job.cancel_requested:
            self._finish(job, CANCELLED)
            return
        job.due = None
        self._status(job, QUEUED)

    # -- transitions -----------------------------------------------------------------------
    def enqueue(self, new: list[NewJob], now: float, observed: dict[str, str]) -> list[tuple[str, str, int]]:
        """Store jobs in order; per job (id, status, attempts) of the record returned.

        ``observed``: the status the backend gave a job whose delay is so short that either
        answer is right (it may have passed while the batch was written); the model adopts it.
        """
        out: list[tuple[str, str, int]] = []
        for spec in new:
            if spec.unique is not None:
                holder = self.unique.get((spec.queue, spec.unique))
                if holder is not None:
                    h = self.jobs[holder]
                    out.append((h.id, h.status, h.attempts))
                    continue
            if spec.supersede and spec.key is not None:
                for old_id in list(self.lanes.get((spec.queue, spec.key), [])):
                    old = self.jobs[old_id]
                    if old.status in WAITING and old.attempts == 0:
                        self._finish(old, CANCELLED)
            if spec.due is None or spec.due <= now:
                status = QUEUED
            elif spec.due == float("inf"):
                status = SCHEDULED
            else:
                status = observed.get(spec.id, SCHEDULED)
                assert status in WAITING, status
            job = MJob(
                id=spec.id, task=spec.task, queue=spec.queue, key=spec.key, unique=spec.unique,
                priority=spec.priority, status=status, order=self._next_order(), due=spec.due,
            )
            self.jobs[job.id] = job
            self._event(job, "status", status)
            if job.unique is not None:
                self.unique[(job.queue, job.unique)] = job.id
            if job.key is not None:
                self.lanes.setdefault((job.queue, job.key), []).append(job.id)
            out.append((job.id, status, 0))
        return out

    def claim(self, queues: list[str], worker: str, limit: int, now: float) -> list[str]:
        """Ids the backend must claim, in order (the test then calls :meth:`leased`)."""
        if limit <= 0 or not queues:
            return []
        found = [j for j in self.jobs.values() if j.queue in queues and self.claimable(j, now)]
        found.sort(key=lambda j: (-j.priority, j.order))
        taken = found[:limit]
        for job in taken:
            job.attempts += 1
            job.worker = worker
            job.cancel_requested = False
            job.token = None  # set by leased() once the backend's token is known
            self._status(job, RUNNING)
        return [j.id for j in taken]

    def leased(self, job_id: str, token: str) -> None:
        """The backend drew ``token`` for the lease of a job just claimed."""
        self.jobs[job_id].token = token

    def renew(self, leases: list[tuple[str, str]]) -> tuple[frozenset[str], frozenset[str]]:
        """(lost, cancel requested) for these leases (the test names each job once)."""
        lost: set[str] = set()
        cancel: set[str] = set()
        for job_id, token in leases:
            job = self.held(job_id, token)
            if job is None:
                lost.add(job_id)
            elif job.cancel_requested:
                cancel.add(job_id)
        return frozenset(lost), frozenset(cancel)

    def complete(self, acks: list[tuple[str, str, Any]]) -> list[bool]:
        out: list[bool] = []
        for job_id, token, result in acks:
            job = self.held(job_id, token)
            if job is None:
                out.append(False)
                continue
            job.result, job.has_result, job.error_type = result, True, None
            self._finish(job, SUCCEEDED)
            out.append(True)
        return out

    def fail(
        self, job_id: str, token: str, error_type: str, retry_at: float | None, dead: bool,
        now: float, observed: str | None = None,
    ) -> bool:
        """``observed``: the backend's status when ``retry_at`` is so near that either is right."""
        job = self.held(job_id, token)
        if job is None:
            return False
        job.error_type = error_type
        if retry_at is None:
            self._finish(job, DEAD if dead else FAILED)
        elif job.cancel_requested:
            # asked to cancel while its attempt failed: not tried again
            self._finish(job, CANCELLED)
        else:
            job.token = None
            job.due = retry_at
            if retry_at <= now:
                status = QUEUED
            elif retry_at == float("inf") or observed is None:
                status = SCHEDULED
            else:
                status = observed
            self._status(job, status)  # it keeps its lane and its place
        return True

    def release(self, leases: list[tuple[str, str]]) -> list[bool]:
        out: list[bool] = []
        for job_id, token in leases:
            job = self.held(job_id, token)
            if job is None:
                out.append(False)
                continue
            job.attempts -= 1  # not counted: the worker gave it back
            self._requeue(job)
            out.append(True)
        return out

    def cancel(self, job_id: str, lease: tuple[str, str] | None, error_type: str | None) -> MJob | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if lease is not None:
            if self.held(*lease) is not None:
                # the stored error is left open without one given (backends differ, unpromised)
                job.error_type = error_type if error_type is not None else ANY_ERROR
                self._finish(job, CANCELLED)
        elif job.status in WAITING:
            self._finish(job, CANCELLED)
        elif job.status == RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            self.touched.add(job.id)
        return job

    def retry(self, job_id: str) -> MJob | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.status not in RETRYABLE:
            return job
        job.order = self._next_order()  # the back of the queue
        job.attempts = 0
        job.lost = 0
        job.cancel_requested = False
        job.token = None
        job.worker = None
        job.due = None
        if job.unique is not None:
            holder = self.unique.setdefault((job.queue, job.unique), job.id)
            if holder != job.id:
                job.unique = None  # an active job holds the value now: this one gives it up
        if job.key is not None:
            self.lanes.setdefault((job.queue, job.key), []).append(job.id)
        self._status(job, QUEUED)
        return job

    def recover(self, expired: set[str], max_lost: int | None) -> set[str]:
        """``expired``: running jobs whose lease has certainly run out (the test knows)."""
        out: set[str] = set()
        for job_id in sorted(expired):
            job = self.jobs[job_id]
            if job.status != RUNNING:
                continue
            out.add(job_id)
            job.lost += 1
            if max_lost is not None and job.lost >= max_lost and not job.cancel_requested:
                job.error_type = "WorkerLost"
                self._finish(job, DEAD)
            else:
                self._requeue(job)
        return out

    def progress(self, job_id: str, token: str, fraction: float, message: str) -> bool:
        job = self.held(job_id, token)
        if job is None:
            return False
        job.progress = (fraction, message)
        self._event(job, "progress", (fraction, message))
        return True

    # -- reads -----------------------------------------------------------------------------
    def stats(self, queue: str | None = None) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for job in self.jobs.values():
            if queue is None or job.queue == queue:
                counts[job.status] += 1
        return counts

    def list_ids(
        self, queue: str | None, status: str | None, task: str | None, limit: int, offset: int
    ) -> list[str]:
        """Newest first: by claim order, a job retried by hand counting as new."""
        found = [
            j for j in self.jobs.values()
            if (queue is None or j.queue == queue) and (status is None or j.status == status)
            and (task is None or j.task == task)
        ]
        found.sort(key=lambda j: j.order, reverse=True)
        return [j.id for j in found[offset : offset + limit]]

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        return {i for i in job_ids if i in self.jobs and self.jobs[i].cancel_requested}
