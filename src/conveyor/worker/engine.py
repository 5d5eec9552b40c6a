"""The worker: claims jobs in batches, runs them on the right executor, and settles them.

One engine serves the CLI (``conveyor worker``), ``async with queue.worker():`` and the FastAPI
lifespan. It never decides storage questions (that is the backend's job) and never lets a task's
failure, a malformed job or a backend hiccup end the claim loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import CodeType
from typing import TYPE_CHECKING, Any

from conveyor.backends.base import Ack, Lease
from conveyor.errors import BackendError, ConfigError, StartupError
from conveyor.model import JobRecord, new_token, utcnow
from conveyor.serde import error_info
from conveyor.worker.attempt import Runner
from conveyor.worker.procpool import locate
from conveyor.worker.watchdog import LoopWatchdog

if TYPE_CHECKING:
    from conveyor.queue import Queue

__all__ = ["Worker"]

log = logging.getLogger("conveyor.worker")

# seconds between cancel_requested polls when the backend pushes cancel requests (a lost push)
_CANCEL_BACKSTOP = 2.0


@dataclass(slots=True, eq=False)
class _AckGroup:
    """Results stored in one ``complete`` call, and how often that failed."""

    acks: list[Ack]
    failures: int = 0
    first_failed_at: float = 0.0


def _transient(exc: BaseException) -> bool:
    """An error that may go away if tried again (the backend unreachable or busy), unlike a
    value the backend cannot take (an encoding error raised before anything crossed the wire).
    """
    return isinstance(exc, BackendError | OSError | TimeoutError)


class Worker:
    """Runs the jobs of one or more named queues with at most ``concurrency`` at a time."""

    def __init__(
        self, queue: Queue, *, concurrency: int = 10, queues: Sequence[str] | None = None,
        grace: float | None = None, lease: float | None = None, cpu_workers: int | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        self.queue = queue
        self.concurrency = concurrency
        self.queues = list(queues or [queue.name])
        self.grace = grace if grace is not None else queue.settings.grace
        self.lease = lease if lease is not None else queue.settings.lease
        if self.lease < 0.1:
            raise ConfigError("lease must be at least 0.1 seconds")
        self.id = f"{socket.gethostname()}:{os.getpid()}:{new_token()[:6]}"
        self.counts: Counter[str] = Counter()
        #: what tasks see as ``ctx.state``: ``state=`` and what the queue's lifespan yielded
        self.state: dict[str, Any] = dict(state or {})
        self._exit_stack: contextlib.AsyncExitStack | None = None  # the lifespan and middlewares
        self._start_lock = asyncio.Lock()
        self._acks: list[Ack] = []
        self._ack_groups: list[_AckGroup] = []  # results being stored (their leases are renewed)
        self._give_up_at: float | None = None  # set at shutdown: stop storing results then
        self._ack_ready = asyncio.Event()
        self._ack_lock = asyncio.Lock()
        self._runner = Runner(
            queue, worker_id=self.id, concurrency=concurrency, cpu_workers=cpu_workers,
            counts=self.counts, on_success=self._acked, state=self.state,
        )
        self._running = self._runner.running
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._watchdog = LoopWatchdog(
            queue.settings.loop_lag_warning, self._task_codes, self._current_job
        )
        self._started = False
        self._parked = False  # the claim loop waits (for work, a slot, a backoff)
        self._claiming = 0  # slots asked for by the claim in flight (pushed jobs leave them free)
        self._shutdown: asyncio.Future[None] | None = None
        self._unwatch: Callable[[], None] | None = None  # stops pushed cancel requests

    def __repr__(self) -> str:
        return f"<Worker {self.id} queues={self.queues} running={len(self._running)}>"

    @property
    def running(self) -> int:
        """How many jobs are executing now."""
        return len(self._running)

    @property
    def stalls(self) -> list[Any]:
        """Event-loop stalls seen so far (see :class:`~conveyor.worker.watchdog.LoopStall`)."""
        return list(self._watchdog.stalls)

    def loop_lag(self) -> float:
        """The longest event-loop lag seen since the last call, in seconds (how late the
        watchdog's heartbeat, due every few hundredths of a second, ran)."""
        return self._watchdog.take_peak()

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the backend, run the lifespan and middlewares' start-up, then start claiming in
        the background of this event loop.

        A lifespan or middleware that fails to start raises :class:`StartupError`, and nothing
        is claimed.
        """
        if self._started:
            return
        async with self._start_lock:
            if self._started:  # another start() finished while this one waited
                return
            # started only once everything is up: a start that failed (the backend is down) can
            # be tried again, and stop() after it has nothing to stop
            await self.queue.open()
            self._exit_stack = await self._start_up()
            try:
                self._unwatch = await self.queue.backend.watch_cancellations(self._cancel_pushed)
            except BaseException:
                await self._shut_down()
                raise
            self._begin()

    async def _start_up(self) -> contextlib.AsyncExitStack:
        """Enter the queue's lifespan, then each middleware's ``startup``; undone on failure."""
        queue = self.queue
        stack = contextlib.AsyncExitStack()
        what = "the queue's lifespan"
        try:
            if queue.worker_lifespan is not None:
                if any(t.cpu for t in queue.tasks.values()) and locate(queue) is None:
                    raise ConfigError(
                        "the queue has a lifespan and cpu=True tasks, whose processes run the "
                        "lifespan too and find it by importing the queue: make the Queue a "
                        "module-level global"
                    )
                state = await stack.enter_async_context(queue.worker_lifespan(queue))
                if state is not None:
                    if not isinstance(state, Mapping):
                        raise ConfigError(
                            f"a lifespan yields a mapping of state or None, not {type(state).__name__}"
                        )
                    self.state.update(state)
            for mw in queue.middleware:
                what = f"middleware {mw!r}"
                await mw.startup(self)
                stack.push_async_callback(mw.shutdown, self)
        except Exception as exc:
            try:
                await stack.aclose()
            except Exception:
                log.exception("worker %s: undoing a failed start-up failed too", self.id)
            raise StartupError(
                f"worker {self.id} did not start: {what} raised {type(exc).__name__}: {exc}"
            ) from exc
        return stack

    async def _shut_down(self) -> None:
        """Each middleware's ``shutdown``, then the end of the lifespan; errors are logged."""
        stack, self._exit_stack = self._exit_stack, None
        if stack is None:
            return
        try:
            await stack.aclose()
        except Exception:
            log.exception("worker %s: the lifespan or a middleware failed to shut down", self.id)

    def _begin(self) -> None:
        self._started = True
        self.queue.backend.deliver_to(self.id, self._take_pushed)
        self._watchdog.start()
        for coro in (self._claim_loop(), self._ack_loop(), self._lease_loop(),
                     self._cancel_loop(), self._recover_loop(), self._purge_loop()):
            self._loops.append(asyncio.create_task(coro))
        log.info("worker %s started on %s (queues %s, concurrency %d)",
                 self.id, self.queue.backend.safe_url, ",".join(self.queues), self.concurrency)

    async def run(self) -> None:
        """Start, then work until ``request_stop()``; then shut down gracefully."""
        await self.start()
        await self._stopping.wait()
        await self.stop()

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the worker was asked to stop."""
        return self._stopping

    def request_stop(self) -> None:
        """Ask the worker to shut down (safe to call from a signal handler on the loop)."""
        self._stopping.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running jobs finish within ``grace`` seconds; release the rest.

        Released jobs go back to their queue without counting an attempt.
        """
        if not self._started:
            return
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._shutdown)

    async def _stop(self, grace: float | None) -> None:
        self._stopping.set()
        grace = self.grace if grace is None else grace
        claim = self._loops[0]
        if self._parked:  # waiting for work or a free slot: nothing in flight to lose
            claim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await claim
        self.queue.backend.deliver_to(self.id, None)
        try:
            await self.queue.backend.retire(self.id)
        except Exception:
            log.warning("worker %s: giving back handed jobs failed; their leases bring them back",
                        self.id, exc_info=True)
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks:
            log.info("worker %s: waiting up to %.1f s for %d running job(s)", self.id, grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for run in list(self._running.values()):
                if run.task in pending:
                    self._runner.interrupt(run, "shutdown")
            if pending:
                _, pending = await asyncio.wait(pending, timeout=max(5.0, self.lease))
            if pending:
                # `def` threads that ignore ctx.cancelled (or tasks that swallow their cancel):
                # put their jobs back and go; a process exit ends the threads
                log.warning("worker %s: %d job(s) still running after shutdown; putting them back",
                            self.id, len(pending))
                for run in list(self._running.values()):
                    if run.task in pending:
                        self._runner.abandon(run)
                await asyncio.wait(pending, timeout=5.0)
        # results not stored by then are left to their leases (at-least-once): stop() returns
        self._give_up_at = time.monotonic() + max(5.0, self.lease)
        await self._flush_acks()
        for loop_task in self._loops[1:]:
            loop_task.cancel()
        await asyncio.gather(*self._loops[1:], return_exceptions=True)
        if self._unwatch is not None:
            self._unwatch()
        self._watchdog.stop()
        await self._runner.close()
        await self._shut_down()
        log.info("worker %s stopped (%s)", self.id, dict(self.counts))

    # -- the claim loop --------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        backend = self.queue.backend
        backoff = 0.05
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._runner.slot_free.clear()
                await self._park(self._runner.slot_free.wait())
                continue
            self._claiming = free
            try:
                records = await backend.claim(self.queues, self.id, free, self.lease)
                backoff = 0.05
            except Exception:
                self._claiming = 0
                log.exception("worker %s: claim failed; trying again in %.2f s", self.id, backoff)
                await self._park(asyncio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
                continue
            self._claiming = 0
            for record in records:
                self._runner.launch(record)
            if not records:
                try:
                    await self._park(backend.wait_for_jobs(self.queues, timeout=1.0, worker=self.id))
                except Exception:
                    log.exception("worker %s: waiting for jobs failed", self.id)
                    await self._park(asyncio.sleep(backoff))

    def _take_pushed(self, record: JobRecord) -> bool:
        """A job the backend claimed for this worker on its own: start it if a slot is free."""
        if self._stopping.is_set() or len(self._running) + self._claiming >= self.concurrency:
            return False
        self._runner.launch(record)
        return True

    async def _park(self, aw: Coroutine[Any, Any, Any]) -> None:
        """Wait in the claim loop; shutdown cancels the loop while it waits here, and only here.

        Awaited directly (no task racing a stop event per wait): on the pickup path every loop
        step counts. A claim in flight is never cancelled: its jobs would wait out their leases.
        """
        if self._stopping.is_set():
            aw.close()
            return
        self._parked = True
        try:
            await aw
        finally:
            self._parked = False

    # -- background loops ------------------------------------------------------------------
    def _acked(self, ack: Ack) -> None:
        self._acks.append(ack)
        self._ack_ready.set()

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_ready.wait()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        # one flush at a time, so shutdown's final flush waits for one already under way
        async with self._ack_lock:
            await self._flush_acks_locked()

    async def _flush_acks_locked(self) -> None:
        """Store results in batches until none is left.

        A batch that fails for a reason that may pass (the backend away or busy) is tried again
        with backoff. A batch the backend refuses (a value it cannot take, or one that keeps
        failing while other batches go through) is halved until the one bad ack is alone; that
        job is then failed instead. New results are not held behind a failing batch.
        """
        groups = self._ack_groups
        delay = 0.05
        ok_at = -1.0  # monotonic time of the last batch the backend took
        while self._acks or groups:
            if self._acks:
                fresh, self._acks = self._acks, []
                self._ack_ready.clear()
                groups.append(_AckGroup(fresh))
            if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                log.error("worker %s: %d result(s) not stored before shutdown; their leases "
                          "bring the jobs back", self.id, sum(len(g.acks) for g in groups))
                groups.clear()
                return
            group = groups.pop()  # newest first
            try:
                results = await self.queue.backend.complete(group.acks)
            except Exception as exc:
                now = time.monotonic()
                if group.failures == 0:
                    group.first_failed_at = now
                group.failures += 1
                # refused: not a passing trouble, or it keeps failing while others go through
                refused = not _transient(exc) or (
                    group.failures >= 3 and ok_at > group.first_failed_at
                )
                if refused and len(group.acks) > 1:
                    half = len(group.acks) // 2
                    groups[:0] = [_AckGroup(group.acks[:half]), _AckGroup(group.acks[half:])]
                    continue
                if refused and await self._refused(group.acks[0], exc):
                    continue
                log.warning("storing %d result(s) failed; retrying in %.2f s",
                            len(group.acks), delay, exc_info=True)
                groups.insert(0, group)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            ok_at = time.monotonic()
            delay = 0.05
            for ok, ack in zip(results, group.acks, strict=True):
                if not ok:
                    self.counts["lost"] += 1
                    log.warning("job %s: result not stored, the lease was lost", ack.job_id)

    async def _refused(self, ack: Ack, exc: Exception) -> bool:
        """The backend will not store this result: fail its job instead. False if it cannot."""
        error = error_info(exc)
        error = {
            "type": "conveyor.errors.NotSerializable",
            "message": f"the backend refused to store the job's result: {error['type']}: "
                       f"{error['message']}",
            "traceback": error["traceback"],
        }
        try:
            stored = await self.queue.backend.fail(Lease(ack.job_id, ack.token), error, retry_at=None)
        except Exception:
            log.warning("job %s: storing its failure failed too", ack.job_id, exc_info=True)
            return False
        self.counts["failed"] += 1
        log.error("job %s failed: %s", ack.job_id, error["message"])
        if not stored:
            log.warning("job %s: failure not stored, the lease was lost", ack.job_id)
        return True

    async def _lease_loop(self) -> None:
        backend = self.queue.backend
        while True:
            await asyncio.sleep(self.lease / 3)
            held = [r.lease for r in self._running.values()] + [a for a in self._pending_leases()]
            if not held:
                continue
            try:
                result = await backend.renew(held, self.lease)
            except Exception:
                log.warning("renewing leases failed", exc_info=True)
                continue
            sent = {lease.job_id: lease.token for lease in held}
            for job_id in result.lost:
                run = self._running.get(job_id)
                # the token renewed must be this attempt's: the job may have come back to this
                # worker as a new attempt while the renewal was under way
                if run is not None and run.lease.token == sent.get(job_id):
                    log.warning("job %s: lease lost; another worker may run it", job_id)
                    self._runner.interrupt(run, "lost")
            for job_id in result.cancel_requested:
                run = self._running.get(job_id)
                if run is not None:
                    self._runner.interrupt(run, "cancel")

    def _pending_leases(self) -> list[Lease]:
        storing = [ack for group in self._ack_groups for ack in group.acks]
        return [Lease(ack.job_id, ack.token) for ack in [*storing, *self._acks]]

    async def _cancel_loop(self) -> None:
        backend = self.queue.backend
        interval = self.queue.settings.cancel_poll
        if self._unwatch is not None:  # requests are pushed; polling is only the backstop
            interval = max(interval, _CANCEL_BACKSTOP)
        while True:
            await asyncio.sleep(interval)
            if not self._running:
                continue
            try:
                wanted = await backend.cancel_requested(list(self._running))
            except Exception:
                log.warning("checking for cancelled jobs failed", exc_info=True)
                continue
            for job_id in wanted:
                run = self._running.get(job_id)
                if run is not None:
                    self._runner.interrupt(run, "cancel")

    def _cancel_pushed(self, job_id: str) -> None:
        run = self._running.get(job_id)
        if run is not None:
            self._runner.interrupt(run, "cancel")

    async def _recover_loop(self) -> None:
        backend = self.queue.backend
        settings = self.queue.settings
        interval = min(settings.recover_interval, self.lease)
        while True:
            try:
                recovered = await backend.recover(settings.max_lost_leases)
                if recovered:
                    self.counts["recovered"] += len(recovered)
                    log.warning("put back %d job(s) whose worker stopped renewing: %s",
                                len(recovered), ", ".join(recovered[:10]))
            except Exception:
                log.warning("recovering expired leases failed", exc_info=True)
            await asyncio.sleep(interval)

    async def _purge_loop(self) -> None:
        # a loop of its own: deleting a big backlog of old jobs goes in small batches and takes
        # its time, which must not hold up the recovery of expired leases
        backend = self.queue.backend
        settings = self.queue.settings
        if settings.retention is None:
            return
        while True:
            await asyncio.sleep(settings.purge_interval)
            try:
                purged = await backend.purge(utcnow() - timedelta(seconds=settings.retention))
                if purged:
                    log.info("deleted %d finished job(s) past their retention", purged)
            except Exception:
                log.warning("deleting old finished jobs failed", exc_info=True)

    # -- watchdog hooks (called from the watchdog thread) ------------------------------------
    def _task_codes(self) -> dict[CodeType, str]:
        return {
            t.fn.__code__: name for name, t in list(self.queue.tasks.items())
            if t.is_async and hasattr(t.fn, "__code__")
        }

    def _current_job(self) -> str | None:
        loop = self._watchdog._loop
        return self._runner.job_of(asyncio.current_task(loop) if loop is not None else None)
