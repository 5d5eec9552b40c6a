"""Running one claimed job: the right executor, timeouts and cancels, and the verdict it earns.

``async def`` tasks run on the loop, ``def`` tasks in a thread pool, ``cpu=True`` tasks in a pool of
processes that can be killed. Each attempt is one asyncio task; cancelling it (a user's cancel, a
timeout, shutdown, a lost lease) is how every kind of task is stopped, and the reason recorded on the
attempt decides what the backend is told afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from conveyor.backends.base import Ack, Lease
from conveyor.context import Context
from conveyor.errors import ArgumentError, ConfigError, NotSerializable, UnknownTask
from conveyor.model import JobRecord, utcnow
from conveyor.retry import Retry
from conveyor.serde import error_info
from conveyor.worker.procpool import ProcessPool, RemoteError

if TYPE_CHECKING:
    from conveyor.queue import Queue
    from conveyor.task import Task

__all__ = ["Attempt", "Runner", "StopReason"]

log = logging.getLogger("conveyor.worker")

StopReason = Literal["cancel", "timeout", "shutdown", "lost"]
# errors that another attempt cannot fix: the job fails at once, whatever its retry policy
_PERMANENT = (UnknownTask, ArgumentError, NotSerializable)


@dataclass(slots=True, eq=False)
class Attempt:
    """One running attempt of a job, as the worker tracks it."""

    record: JobRecord
    lease: Lease
    ctx: Context
    task: asyncio.Task[None] | None = None
    reason: StopReason | None = None
    timer: asyncio.TimerHandle | None = None


class Runner:
    """Starts attempts of claimed jobs and settles each with the backend when it ends."""

    def __init__(
        self, queue: Queue, *, worker_id: str, concurrency: int, cpu_workers: int | None,
        counts: Counter[str], on_success: Callable[[Ack], None],
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.counts = counts
        self.running: dict[str, Attempt] = {}
        self.by_task: dict[asyncio.Task[None], Attempt] = {}
        self.slot_free = asyncio.Event()
        self._on_success = on_success  # results are stored in batches by the worker
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="conveyor-job")
        self._procs = ProcessPool(cpu_workers)

    def close(self) -> None:
        """Drop the executors: threads still running are abandoned, child processes killed."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._procs.close()

    def job_of(self, task: asyncio.Task[Any] | None) -> str | None:
        """The id of the job an asyncio task runs, if it runs one."""
        run = self.by_task.get(task) if task is not None else None
        return run.record.id if run is not None else None

    def launch(self, record: JobRecord) -> None:
        assert record.lease_token is not None
        lease = Lease(record.id, record.lease_token)
        loop = asyncio.get_running_loop()
        ctx = Context(
            job_id=record.id, task=record.task, queue=record.queue, attempt=record.attempts,
            report=self._reporter(lease), loop=loop,
        )
        run = Attempt(record, lease, ctx)
        self.running[record.id] = run
        run.task = loop.create_task(self._execute(run), name=f"conveyor:{record.task}:{record.id}")
        self.by_task[run.task] = run
        if record.timeout:
            run.timer = loop.call_later(record.timeout, self.interrupt, run, "timeout")

    def _reporter(self, lease: Lease) -> Any:
        backend = self.queue.backend

        async def report(fraction: float, message: str) -> None:
            if not await backend.progress(lease, fraction, message):
                log.warning("job %s: progress not stored (lease lost)", lease.job_id)

        return report

    def interrupt(self, run: Attempt, reason: StopReason) -> None:
        """Stop a running job: cancel its coroutine (kills a process, abandons a thread)."""
        if run.reason is not None or run.task is None or run.task.done():
            return
        run.reason = reason
        run.ctx._cancel()
        run.task.cancel()

    # -- running one job -------------------------------------------------------------------
    async def _execute(self, run: Attempt) -> None:
        record = run.record
        task = self.queue.tasks.get(record.task)
        try:
            await self._attempt(run, task)
        except asyncio.CancelledError:
            raise
        except Exception:
            # a bug of ours must not kill the worker; the lease brings the job back
            log.exception("worker %s: internal error while settling job %s", self.worker_id, record.id)
        finally:
            if run.timer is not None:
                run.timer.cancel()
            self.running.pop(record.id, None)
            if run.task is not None:
                self.by_task.pop(run.task, None)
            self.slot_free.set()

    async def _attempt(self, run: Attempt, task: Task[Any, Any] | None) -> None:
        try:
            value = await self._call(task, run)
        except asyncio.CancelledError:
            if run.reason is None:
                raise
            await self._stopped_early(run, task)
            return
        except BaseException as exc:  # SystemExit from a task is the task's failure, not ours
            if run.reason is not None:
                # the task turned our cancellation into something else; honour the cancel
                await self._stopped_early(run, task)
                return
            await self._failed(run, task, exc)
            return
        if run.reason is not None:
            await self._stopped_early(run, task)
            return
        self.counts["succeeded"] += 1
        self._on_success(Ack(run.record.id, run.lease.token, value))

    async def _call(self, task: Task[Any, Any] | None, run: Attempt) -> Any:
        record = run.record
        if task is None:
            raise UnknownTask(
                f"no task named {record.task!r} is registered on this worker's queue "
                f"(known: {sorted(self.queue.tasks)})"
            )
        if task.cpu:
            return await self._procs.run(task, record, run.ctx._report)
        values = task.signature.decode_values(record.args, record.kwargs)
        injected: dict[str, Any] = dict.fromkeys(task.signature.context_params, run.ctx)
        async with contextlib.AsyncExitStack() as stack:
            if task.signature.dependency_params:
                # FastAPI-style Depends(): resolved per attempt, generators closed after it
                resolver = importlib.import_module("conveyor.fastapi.dependencies")
                injected.update(await resolver.resolve(task, run.ctx, stack))
            args, kwargs = task.signature.assemble(values, injected)
            if task.is_async:
                result = await task.fn(*args, **kwargs)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self._threads, lambda: task.fn(*args, **kwargs)
                )
        return task.signature.encode_result(result)

    async def _failed(self, run: Attempt, task: Task[Any, Any] | None, exc: BaseException) -> None:
        record = run.record
        error = exc.info if isinstance(exc, RemoteError) else error_info(exc)
        policy = self._policy(record, task)
        attempts_left = record.attempts < record.max_attempts and not isinstance(exc, _PERMANENT)
        backend = self.queue.backend
        if attempts_left:
            delay = policy.delay(record.attempts)
            retry_at = utcnow() + timedelta(seconds=delay)
            self.counts["retried"] += 1
            log.warning("job %s (%s) attempt %d/%d failed, retrying in %.2f s: %s: %s",
                        record.id, record.task, record.attempts, record.max_attempts, delay,
                        error["type"], error["message"])
            ok = await self._settle(lambda: backend.fail(run.lease, error, retry_at=retry_at))
        else:
            dead = record.max_attempts > 1
            self.counts["dead" if dead else "failed"] += 1
            log.error("job %s (%s) %s after %d attempt(s): %s: %s\n%s",
                      record.id, record.task, "dead" if dead else "failed", record.attempts,
                      error["type"], error["message"], error["traceback"])
            ok = await self._settle(
                lambda: backend.fail(run.lease, error, retry_at=None, dead=dead)
            )
        if not ok:
            log.warning("job %s: failure not stored, the lease was lost", record.id)

    async def _stopped_early(self, run: Attempt, task: Task[Any, Any] | None) -> None:
        record, backend = run.record, self.queue.backend
        if run.reason == "shutdown":
            self.counts["released"] += 1
            await self._settle(lambda: backend.release([run.lease]))
        elif run.reason == "cancel":
            self.counts["cancelled"] += 1
            log.info("job %s (%s) cancelled while running", record.id, record.task)
            await self._settle(lambda: backend.cancel(record.id, lease=run.lease))
        elif run.reason == "timeout":
            await self._failed(run, task, TimeoutError(
                f"{record.task} did not finish within its {record.timeout} s timeout"
            ))
        else:  # lost: another worker owns the job now; leave it alone
            self.counts["lost"] += 1

    @staticmethod
    def _policy(record: JobRecord, task: Task[Any, Any] | None) -> Retry:
        if record.retry:
            try:
                return Retry.from_dict(record.retry)
            except (TypeError, ValueError, ConfigError):
                log.error("job %s: stored retry policy %r is malformed", record.id, record.retry)
        if task is not None:
            return task.retry
        return Retry(attempts=max(1, record.max_attempts))

    async def _settle(self, make: Callable[[], Awaitable[Any]]) -> bool:
        """Apply a transition, retrying through backend errors; True if it took effect.

        If the backend stays unreachable the job is left running: its lease expires and another
        worker puts it back (at-least-once), so giving up here loses nothing.
        """
        delay = 0.05
        for attempt in range(8):
            try:
                out = await make()
            except Exception:
                if attempt == 7:
                    log.exception("giving up on a job transition; its lease will bring it back")
                    return False
                log.warning("job transition failed, retrying in %.2f s", delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if isinstance(out, list):
                return all(out)
            return out is not None and out is not False
        return False

