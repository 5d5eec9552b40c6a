"""Middleware: the order of its hooks around enqueue and each attempt, and what its errors do."""

from __future__ import annotations

import contextvars
import logging
import subprocess
import sys
import textwrap
from datetime import datetime
from typing import Any

import pytest
from conformance.helpers import RESULT_TIMEOUT, Gate, assert_nothing_written  # tests/ is on sys.path
from waiting import wait_until  # tests/ is on sys.path

from conveyor import Context, Queue, Retry
from conveyor.errors import JobCancelled, JobFailed, StartupError
from conveyor.middleware import CallNext, EnqueueNext, InterruptReason, Middleware
from conveyor.model import ErrorInfo, JobRecord
from conveyor.worker import Worker

WAIT = RESULT_TIMEOUT


class Recorder(Middleware):
    """Writes every hook it sees to a shared list as ``(name, hook, detail)``."""

    def __init__(self, name: str, calls: list[tuple[str, str, Any]]) -> None:
        self.name = name
        self.calls = calls

    def note(self, hook: str, detail: Any = None) -> None:
        self.calls.append((self.name, hook, detail))

    async def enqueue(self, jobs: list[JobRecord], call_next: EnqueueNext) -> list[JobRecord]:
        self.note("enqueue", len(jobs))
        stored = await call_next(jobs)
        self.note("enqueued", len(stored))
        return stored

    async def startup(self, worker: Worker) -> None:
        self.note("startup")

    async def shutdown(self, worker: Worker) -> None:
        self.note("shutdown")

    def before_attempt(self, job: JobRecord, ctx: Context) -> None:
        self.note("before", (job.task, ctx.attempt))

    async def call(self, job: JobRecord, ctx: Context, call_next: CallNext) -> Any:
        self.note("call")
        try:
            return await call_next()
        finally:
            self.note("called")

    def after_success(self, job: JobRecord, ctx: Context, result: Any) -> None:
        self.note("success", result)

    def after_failure(
        self, job: JobRecord, ctx: Context, error: ErrorInfo, retry_at: datetime | None
    ) -> None:
        self.note("failure", (error["type"], retry_at is not None))

    def on_dead(self, job: JobRecord, ctx: Context, error: ErrorInfo) -> None:
        self.note("dead", error["type"])

    def after_interrupt(self, job: JobRecord, ctx: Context, reason: InterruptReason) -> None:
        self.note("interrupt", reason)


def recorded(calls: list[tuple[str, str, Any]], skip: tuple[str, ...] = ()) -> list[str]:
    return [f"{name}.{hook}" for name, hook, _ in calls if hook not in skip]


async def test_hooks_nest_outermost_first_around_enqueue_and_each_outcome() -> None:
    """Queue(middleware=[a, b]): a wraps b around enqueue and the body; before hooks and startup
    run a then b; end hooks and shutdown b then a; each outcome gets its own end hook."""
    calls: list[tuple[str, str, Any]] = []
    queue = Queue("memory://", middleware=[Recorder("a", calls), Recorder("b", calls)])
    gate = Gate()

    @queue.task(name="ok")
    async def ok() -> int:
        return 1

    @queue.task(name="flaky", retries=Retry(attempts=2, backoff=0.0))
    async def flaky(ctx: Context) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return 2

    @queue.task(name="doomed", retries=Retry(attempts=2, backoff=0.0))
    async def doomed() -> None:
        raise ValueError("always")

    @queue.task(name="slow")
    async def slow() -> None:
        await gate.wait()

    async with queue:
        job = await ok.enqueue()
        assert recorded(calls) == ["a.enqueue", "b.enqueue", "b.enqueued", "a.enqueued"]
        calls.clear()
        async with queue.worker(concurrency=1, grace=0.1):
            assert await job.result(timeout=WAIT) == 1
            assert recorded(calls, skip=("enqueue", "enqueued")) == [
                "a.startup", "b.startup", "a.before", "b.before", "a.call", "b.call",
                "b.called", "a.called", "b.success", "a.success",
            ]
            for task, outcome in ((flaky, 2), (doomed, None)):
                calls.clear()
                job = await task.enqueue()
                if outcome is None:
                    with pytest.raises(JobFailed):
                        await job.result(timeout=WAIT)
                else:
                    assert await job.result(timeout=WAIT) == outcome
                ends = [(n, h, d) for n, h, d in calls if h in ("failure", "dead", "success")]
                assert ends == ([
                    ("b", "failure", ("RuntimeError", True)), ("a", "failure", ("RuntimeError", True)),
                    ("b", "success", 2), ("a", "success", 2),
                ] if outcome else [
                    ("b", "failure", ("ValueError", True)), ("a", "failure", ("ValueError", True)),
                    ("b", "failure", ("ValueError", False)), ("a", "failure", ("ValueError", False)),
                    ("b", "dead", "ValueError"), ("a", "dead", "ValueError"),
                ])
            calls.clear()
            job = await slow.enqueue()
            await wait_until(lambda: gate.entered == 1, message="the job started")
            await job.cancel()
            with pytest.raises(JobCancelled):
                await job.result(timeout=WAIT)
            assert [c for c in calls if c[1] == "interrupt"] == [
                ("b", "interrupt", "cancel"), ("a", "interrupt", "cancel"),
            ]
            calls.clear()
            held = await slow.enqueue()  # still running when the worker stops: put back
            await wait_until(lambda: gate.entered == 2, message="the job started")
        assert await held.status() == "queued"
    assert [c for c in calls if c[1] in ("interrupt", "shutdown")] == [
        ("b", "interrupt", "shutdown"), ("a", "interrupt", "shutdown"),
        ("b", "shutdown", None), ("a", "shutdown", None),
    ]


class Refuses(Middleware):
    """Raises in the hook named ``where``."""

    def __init__(self, where: str) -> None:
        self.where = where

    async def enqueue(self, jobs: list[JobRecord], call_next: EnqueueNext) -> list[JobRecord]:
        if self.where == "enqueue":
            raise PermissionError("tenant over quota")
        return await call_next(jobs)

    async def startup(self, worker: Worker) -> None:
        if self.where == "startup":
            raise ConnectionError("metrics backend unreachable")

    def before_attempt(self, job: JobRecord, ctx: Context) -> None:
        if self.where == "before":
            raise PermissionError("not this tenant")

    def after_success(self, job: JobRecord, ctx: Context, result: Any) -> None:
        if self.where == "after":
            raise RuntimeError("broken exporter")


async def test_an_enqueue_hook_that_raises_fails_the_enqueue_and_stores_nothing() -> None:
    """A middleware's enqueue raising before call_next: the caller gets its error, nothing is stored."""
    queue = Queue("memory://", middleware=[Refuses("enqueue")])

    @queue.task
    async def noop() -> None: ...

    async with queue:
        with pytest.raises(PermissionError, match="quota"):
            await noop.enqueue()
        await assert_nothing_written(queue)


async def test_a_before_attempt_that_raises_fails_the_attempt_without_running_the_body() -> None:
    """before_attempt raising: the attempt fails with that error (stored), the body never runs,
    and only the middlewares whose before_attempt ran get an end hook."""
    calls: list[tuple[str, str, Any]] = []
    queue = Queue("memory://", middleware=[Recorder("a", calls), Refuses("before"),
                                           Recorder("c", calls)])
    ran: list[int] = []

    @queue.task
    async def body() -> None:
        ran.append(1)

    async with queue:
        job = await body.enqueue()
        async with queue.worker():
            with pytest.raises(JobFailed) as failure:
                await job.result(timeout=WAIT)
    assert failure.value.type == "PermissionError" and ran == []
    assert [(n, h) for n, h, _ in calls if h not in ("startup", "shutdown", "enqueue", "enqueued")] == [
        ("a", "before"), ("a", "failure"),
    ]


async def test_an_end_hook_that_raises_is_logged_and_the_outcome_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """after_success raising: logged with its traceback, the job still succeeds, and the other
    middlewares' end hooks still run."""
    calls: list[tuple[str, str, Any]] = []
    queue = Queue("memory://", middleware=[Recorder("a", calls), Refuses("after")])

    @queue.task
    async def fine() -> int:
        return 5

    async with queue:
        job = await fine.enqueue()
        with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
            async with queue.worker():
                assert await job.result(timeout=WAIT) == 5
    assert ("a", "success", 5) in calls
    errors = [r for r in caplog.records if "after_success" in r.getMessage()]
    assert errors and errors[0].exc_info and "broken exporter" in str(errors[0].exc_info[1])


async def test_a_middleware_that_fails_to_start_stops_the_worker_before_it_claims() -> None:
    """startup raising: StartupError naming the middleware, those started before are shut down,
    the lifespan ends, and the waiting job is never claimed."""
    calls: list[tuple[str, str, Any]] = []
    queue = Queue("memory://", middleware=[Recorder("a", calls), Refuses("startup")])

    @queue.task
    async def noop() -> None: ...

    async with queue:
        job = await noop.enqueue()
        worker = queue.worker()
        with pytest.raises(StartupError, match=r"Refuses.*ConnectionError: metrics backend") as err:
            await worker.start()
        assert isinstance(err.value.__cause__, ConnectionError)
        assert [h for _, h, _ in calls if h in ("startup", "shutdown")] == ["startup", "shutdown"]
        await worker.stop()  # nothing to stop
        info = await job.info()
        assert (info.status, info.attempts) == ("queued", 0)


tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


class Tenant(Middleware):
    """Sets a context variable from the job's meta around the body."""

    async def call(self, job: JobRecord, ctx: Context, call_next: CallNext) -> Any:
        token = tenant.set(ctx.meta.get("tenant", "?"))
        try:
            return await call_next()
        finally:
            tenant.reset(token)


async def test_a_context_variable_set_around_the_body_is_seen_by_async_and_def_tasks() -> None:
    """A value a middleware puts in a contextvar around the call is what the task reads, in
    async def on the loop and in def in a thread."""
    queue = Queue("memory://", middleware=[Tenant()])

    @queue.task
    async def on_loop() -> str:
        return tenant.get()

    @queue.task
    def in_thread() -> str:
        return tenant.get()

    async with queue:
        jobs = [await t.options(meta={"tenant": f"t-{t.name}"}).enqueue() for t in (on_loop, in_thread)]
        async with queue.worker():
            assert [await j.result(timeout=WAIT) for j in jobs] == [
                f"t-{on_loop.name}", f"t-{in_thread.name}",
            ]


def test_the_worker_runs_jobs_without_importing_fastapi() -> None:
    """A worker runs a job end to end and nothing of FastAPI (nor conveyor.fastapi) is imported."""
    script = textwrap.dedent("""
        import asyncio, sys
        from conveyor import Queue
        queue = Queue("memory://")

        @queue.task
        async def one() -> int:
            return 1

        async def main() -> None:
            async with queue, queue.worker():
                assert await (await one.enqueue()).result(timeout=10) == 1

        asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "fastapi" or
                        m.startswith("conveyor.fastapi"))
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
