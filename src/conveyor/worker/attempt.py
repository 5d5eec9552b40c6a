"""Running one claimed job: the right executor, timeouts and cancels, and the verdict it earns.

``async def`` tasks run on the loop, ``def`` tasks in a thread pool, ``cpu=True`` tasks in a pool of
processes that can be killed. Each attempt is one asyncio task; cancelling it (a user's cancel, a
timeout, shutdown, a lost lease) is how an async or cpu task is stopped, and the reason recorded on
the attempt decides what the backend is told afterwards.

A thread cannot be stopped: a ``def`` task past its timeout or cancel only sees ``ctx.cancelled``.
Its attempt keeps its slot (and its lane, and its lease) until the thread returns, and only then is
the verdict stored, saying how long the thread ran past the stop. Every attempt ends with exactly
one verdict, however the task ends (``CancelledError``, ``SystemExit``, an unprintable exception).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from conveyor.backends.base import Ack, Lease
from conveyor.context import Context
from conveyor.errors import ArgumentError, ConfigError, NotSerializable, UnknownTask
from conveyor.logs import current_job
from conveyor.middleware import Middleware, call_through, overrides
from conveyor.model import ErrorInfo, JobRecord, utcnow
from conveyor.retry import Retry
from conveyor.serde import error_info
from conveyor.worker.procpool import ChildInterrupted, ProcessPool, RemoteError
from conveyor.worker.progress import ProgressWriter, Stored

if TYPE_CHECKING:
    from conveyor.queue import Queue
    from conveyor.task import Task

__all__ = ["Attempt", "Runner", "StopReason"]

log = logging.getLogger("conveyor.worker")

StopReason = Literal["cancel", "timeout", "shutdown", "lost"]
_NO_VALUES: Mapping[str, Any] = MappingProxyType({})
# errors that another attempt cannot fix: the job fails at once, whatever its retry policy
_PERMANENT = (UnknownTask, ArgumentError, NotSerializable)


class _NotStarted(Exception):
    """The attempt was stopped before its thread began the task's body."""


@dataclass(slots=True, eq=False)
class Attempt:
    """One running attempt of a job, as the worker tracks it."""

    record: JobRecord
    lease: Lease
    ctx: Context = field(init=False)
    task: asyncio.Task[None] | None = None
    reason: StopReason | None = None
    timer: asyncio.TimerHandle | None = None
    threaded: bool = False  # the body runs in a thread, which cannot be stopped
    in_thread: bool = False  # ... and is running there now: a stop waits for it
    stopped_at: float | None = None  # loop time of the stop request
    progress: ProgressWriter | None = None  # made on the first report
    settling: bool = False  # the body has ended: its verdict is being stored, stops come too late
    entered: int = 0  # middlewares whose before_attempt ran: they get the end hooks


class _FromThread(Exception):
    """Carries a ``def`` task's StopIteration out of the coroutine that awaited its thread."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__()
        self.raised = raised


class Runner:
    """Starts attempts of claimed jobs and settles each with the backend when it ends."""

    def __init__(
        self, queue: Queue, *, worker_id: str, concurrency: int, cpu_workers: int | None,
        counts: Counter[str], on_success: Callable[[Ack], None], state: Mapping[str, Any],
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.counts = counts
        self.state = state  # the lifespan's, shared by every attempt
        self.middleware = queue.middleware  # observers of every attempt, outermost first
        self._chains: dict[str, tuple[Middleware, ...]] = {}  # per task: the `call` wrappers
        self.running: dict[str, Attempt] = {}
        self.by_task: dict[asyncio.Task[None], Attempt] = {}
        self.slot_free = asyncio.Event()
        self._on_success = on_success  # results are stored in batches by the worker
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="conveyor-job")
        self._procs = ProcessPool(cpu_workers, queue)
        self._progress_lock = threading.Lock()

    async def close(self) -> None:
        """Drop the executors: threads still running are abandoned; idle child processes end
        their lifespan and exit (busy ones are killed)."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        await self._procs.shutdown()

    def job_of(self, task: asyncio.Task[Any] | None) -> str | None:
        """The id of the job an asyncio task runs, if it runs one."""
        run = self.by_task.get(task) if task is not None else None
        return run.record.id if run is not None else None

    def launch(self, record: JobRecord) -> None:
        assert record.lease_token is not None
        loop = asyncio.get_running_loop()
        stale = self.running.get(record.id)
        if stale is not None:
            # the store gave this job to us again (its earlier lease was taken back while that
            # attempt still ran here): the earlier attempt can store nothing more; stop it
            log.warning("job %s: claimed again while an earlier attempt still runs here; "
                        "stopping that one (its lease is gone)", record.id)
            self.interrupt(stale, "lost")
        run = Attempt(record, Lease(record.id, record.lease_token))
        run.ctx = Context(
            job_id=record.id, task=record.task, queue=record.queue, attempt=record.attempts,
            report=functools.partial(self._report, run), loop=loop, meta=record.meta,
            state=self.state,
        )
        self.running[record.id] = run
        run.task = loop.create_task(self._execute(run), name=f"conveyor:{record.task}:{record.id}")
        self.by_task[run.task] = run
        task = self.queue.tasks.get(record.task)
        # a def or cpu task's timeout counts from when its thread or process takes it up
        if record.timeout and (task is None or task.is_async):
            run.timer = loop.call_later(record.timeout, self.interrupt, run, "timeout")

    def _report(self, run: Attempt, fraction: float, message: str) -> Stored:
        writer = run.progress
        if writer is None:  # the first report of this attempt, from any thread
            with self._progress_lock:
                if run.progress is None:
                    assert run.task is not None
                    run.progress = ProgressWriter(self.queue.backend, run.lease, run.task.get_loop())
                writer = run.progress
        return writer.report(fraction, message)

    def _began(self, run: Attempt) -> None:
        """The body started in its thread or process: its timeout counts from now."""
        if run.record.timeout and run.reason is None and run.timer is None:
            loop = asyncio.get_running_loop()
            run.timer = loop.call_later(run.record.timeout, self.interrupt, run, "timeout")

    def interrupt(self, run: Attempt, reason: StopReason) -> None:
        """Stop a running job: cancel its coroutine (kills a process); a thread is told and awaited."""
        if run.reason is not None or run.settling or run.task is None or run.task.done():
            return
        run.reason = reason
        run.stopped_at = run.task.get_loop().time()
        run.ctx._cancel()
        if run.in_thread:
            # the thread cannot be stopped: keep the slot, the lane and the lease until it returns
            log.warning("job %s (%s): %s requested; its `def` task keeps running in its thread "
                        "until it returns (check ctx.cancelled)", run.record.id, run.record.task,
                        reason)
            return
        run.task.cancel()

    def abandon(self, run: Attempt) -> None:
        """At the end of shutdown: give up waiting for a thread that ignores ``ctx.cancelled``."""
        if run.task is not None and not run.task.done():
            if run.reason is None:
                run.reason = "shutdown"
            run.in_thread = False
            run.task.cancel()

    # -- running one job -------------------------------------------------------------------
    async def _execute(self, run: Attempt) -> None:
        record = run.record
        task = self.queue.tasks.get(record.task)
        current_job.set(run.ctx)  # this attempt's asyncio task only: its log records know the job
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
            if self.running.get(record.id) is run:  # not a newer attempt of the same job
                del self.running[record.id]
            if run.task is not None:
                self.by_task.pop(run.task, None)
            self.slot_free.set()

    async def _attempt(self, run: Attempt, task: Task[Any, Any] | None) -> None:
        # the verdict is stored outside the except blocks: awaiting while a task's own
        # GeneratorExit or CancelledError is the exception being handled confuses the machinery
        failure: BaseException | None = None
        try:
            if self.middleware:
                self._before(run)
            value = await self._call(task, run)
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if run.reason is None and current is not None and current.cancelling():
                raise  # not a stop we asked for (the loop is going away): the lease brings it back
            if current is not None and current.cancelling():
                current.uncancel()  # ours, and handled here
            failure = exc  # with no stop asked for, the task raised it on its own: its failure
        except BaseException as exc:  # SystemExit from a task is the task's failure, not ours
            if isinstance(exc, _FromThread):
                exc = exc.raised
            if run.reason is None and isinstance(exc, ChildInterrupted):
                # Ctrl-C or a service stop reached the child: shutdown, not the task's failure
                log.warning("job %s (%s): %s; putting it back", run.record.id, run.record.task, exc)
                run.reason = "shutdown"
            failure = exc
        # the body has ended: a timeout, cancel or shutdown from now on comes too late, and must
        # not cancel the storing of this verdict (the job would stay running with no verdict)
        run.settling = True
        if run.timer is not None:
            run.timer.cancel()
        if run.reason is not None:
            # stopped (perhaps the task turned our cancel into something else): honour the stop
            await self._stopped_early(run, task)
            return
        if failure is not None:
            await self._failed(run, task, failure)
            return
        if run.progress is not None:
            await run.progress.close()
        self.counts["succeeded"] += 1
        if run.entered:
            self._after(run, "after_success", value)
        self._on_success(Ack(run.record.id, run.lease.token, value))

    # -- middleware ------------------------------------------------------------------------
    def _before(self, run: Attempt) -> None:
        """Each middleware's before_attempt, outermost first; one that raises fails the attempt."""
        for mw in self.middleware:
            mw.before_attempt(run.record, run.ctx)
            run.entered += 1

    def _after(self, run: Attempt, hook: str, *args: Any) -> None:
        """An end hook of each middleware that saw the attempt begin, innermost first; errors are
        logged, never raised (the outcome stands)."""
        for mw in reversed(self.middleware[: run.entered]):
            try:
                getattr(mw, hook)(run.record, run.ctx, *args)
            except Exception:
                log.exception("middleware %r: %s of job %s raised (ignored)", mw, hook, run.record.id)

    def _chain(self, task: Task[Any, Any]) -> tuple[Middleware, ...]:
        chain = self._chains.get(task.name)
        if chain is None:
            wrapping = tuple(mw for mw in self.middleware if overrides(mw, "call"))
            chain = self._chains[task.name] = wrapping + task.inner_middleware
        return chain

    async def _call(self, task: Task[Any, Any] | None, run: Attempt) -> Any:
        record = run.record
        if task is None:
            raise UnknownTask(
                f"no task named {record.task!r} is registered on this worker's queue "
                f"(known: {sorted(self.queue.tasks)})"
            )
        chain = self._chain(task)
        if chain:  # middlewares around the body (FastAPI's Depends is one)
            body = functools.partial(self._body, task, run)
            result = await call_through(chain, record, run.ctx, body)
        else:
            result = await self._body(task, run, _NO_VALUES)
        if task.cpu:
            return result  # JSON already, checked in the child
        # within the JSON limits (check_json: 64-bit ints, bounded depth, valid Unicode), which
        # is what makes the backend's own encoding of it certain to succeed; a value it refuses
        # anyway is isolated by the result loop and fails that job alone
        return task.signature.encode_result(result)

    def _body(self, task: Task[Any, Any], run: Attempt, extra: Mapping[str, Any]) -> Awaitable[Any]:
        """The task's function called on its executor, to await; ``extra`` fills injected
        parameters. (Not a coroutine itself: no extra frame per job.)"""
        record = run.record
        if task.cpu:
            return self._procs.run(task, record, run.ctx._report, functools.partial(self._began, run))
        values = task.signature.decode_values(record.args, record.kwargs)
        injected: dict[str, Any] = dict.fromkeys(task.signature.context_params, run.ctx)
        if extra:
            injected.update(extra)
        args, kwargs = task.signature.assemble(values, injected)
        if task.is_async:
            return task.fn(*args, **kwargs)  # type: ignore[no-any-return]
        return self._in_thread(run, functools.partial(task.fn, *args, **kwargs))

    async def _in_thread(self, run: Attempt, call: Callable[[], Any]) -> Any:
        """Run ``call`` in the thread pool; a stop request waits for it instead of abandoning it."""
        loop = asyncio.get_running_loop()
        timed = bool(run.record.timeout)
        ctx = run.ctx

        def body() -> tuple[bool, Any]:
            if ctx.cancelled:  # stopped while waiting for the thread: never start the task
                return False, _NotStarted()
            if timed:
                loop.call_soon_threadsafe(self._began, run)
            try:
                return True, call()
            except BaseException as exc:  # re-raised below, on the loop
                # handed back as a value: a GeneratorExit set on the future would be thrown
                # into this coroutine as a close(), not raised as the task's failure
                return False, exc

        run.threaded = run.in_thread = True
        try:
            # in a copy of this attempt's context: the job's log fields, a middleware's span
            ok, out = await loop.run_in_executor(self._threads, contextvars.copy_context().run, body)
        finally:
            run.in_thread = False
        if not ok:
            if isinstance(out, StopIteration | StopAsyncIteration):
                # raised in this coroutine it would turn into RuntimeError (PEP 479): carry it
                raise _FromThread(out)
            raise out
        return out

    async def _failed(self, run: Attempt, task: Task[Any, Any] | None, exc: BaseException) -> None:
        record = run.record
        error = exc.info if isinstance(exc, RemoteError) else error_info(exc)
        permanent = isinstance(exc, _PERMANENT) or (isinstance(exc, RemoteError) and exc.permanent)
        policy = self._policy(record, task)
        attempts_left = record.attempts < record.max_attempts and not permanent
        backend = self.queue.backend
        if run.progress is not None:
            await run.progress.close()
        if attempts_left:
            delay = policy.delay(record.attempts)
            retry_at: datetime | None = utcnow() + timedelta(seconds=delay)
            self.counts["retried"] += 1
            log.warning("job %s (%s) attempt %d/%d failed, retrying in %.2f s: %s: %s",
                        record.id, record.task, record.attempts, record.max_attempts, delay,
                        error["type"], error["message"])
            if run.entered:
                self._after(run, "after_failure", error, retry_at)
            ok = await self._settle(lambda: backend.fail(run.lease, error, retry_at=retry_at))
        else:
            dead = record.max_attempts > 1
            self.counts["dead" if dead else "failed"] += 1
            log.error("job %s (%s) %s after %d attempt(s): %s: %s\n%s",
                      record.id, record.task, "dead" if dead else "failed", record.attempts,
                      error["type"], error["message"], error["traceback"])
            if run.entered:
                self._after(run, "after_failure", error, None)
                if dead:
                    self._after(run, "on_dead", error)
            ok = await self._settle(
                lambda: backend.fail(run.lease, error, retry_at=None, dead=dead)
            )
        if not ok:
            log.warning("job %s: failure not stored, the lease was lost", record.id)

    async def _stopped_early(self, run: Attempt, task: Task[Any, Any] | None) -> None:
        record, backend = run.record, self.queue.backend
        if run.progress is not None:
            await run.progress.close(store=run.reason != "lost")
        if run.entered and run.reason != "timeout":  # a timeout is a failure: _failed tells
            self._after(run, "after_interrupt", run.reason)
        if run.reason == "shutdown":
            self.counts["released"] += 1
            await self._settle(lambda: backend.release([run.lease]))
        elif run.reason == "cancel":
            self.counts["cancelled"] += 1
            log.info("job %s (%s) cancelled while running", record.id, record.task)
            error = self._late_thread(run, "cancel")
            await self._settle(lambda: backend.cancel(record.id, lease=run.lease, error=error))
        elif run.reason == "timeout":
            message = f"{record.task} did not finish within its {record.timeout} s timeout"
            late = self._late_thread(run, "timeout")
            await self._failed(run, task, TimeoutError(
                message if late is None else f"{message}; {late['message']}"
            ))
        else:  # lost: another worker owns the job now; leave it alone
            self.counts["lost"] += 1

    def _late_thread(self, run: Attempt, what: str) -> ErrorInfo | None:
        """For a `def` task stopped by a timeout or cancel: how long its thread ran past it."""
        if not run.threaded or run.stopped_at is None or run.task is None:
            return None
        late = run.task.get_loop().time() - run.stopped_at
        return {
            "type": "TimeoutError" if what == "timeout" else "Cancelled",
            "message": (
                f"its thread ran {late:.2f} s past its {what} (a `def` task cannot be stopped: "
                "it should return when ctx.cancelled is true); the job kept its slot and lane "
                "until then"
            ),
            "traceback": "",
        }

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

