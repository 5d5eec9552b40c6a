"""The worker's lifespan: once per worker, around every job, its state seen by tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest
from conformance.helpers import RESULT_TIMEOUT, Gate  # tests/ is on sys.path
from fastapi import Depends, FastAPI, Request
from waiting import wait_until  # tests/ is on sys.path

from conveyor import Context, Queue
from conveyor.errors import StartupError

from .fastapi_support import client_for


def pool_lifespan(events: list[str]) -> Any:
    @asynccontextmanager
    async def lifespan(queue: Queue) -> AsyncIterator[dict[str, Any]]:
        events.append(f"start {queue.name}")
        yield {"pool": "the pool", "shared": "queue"}
        events.append("stop")

    return lifespan


async def test_the_lifespan_runs_once_per_worker_around_all_its_jobs() -> None:
    """The lifespan starts before the first job and ends after the last one finished (a job
    still running at shutdown too); async and def tasks read its state as ctx.state."""
    events: list[str] = []
    queue = Queue("memory://", lifespan=pool_lifespan(events))
    gate = Gate()

    @queue.task
    async def on_loop(ctx: Context) -> str:
        events.append("job")
        return str(ctx.state["pool"])

    @queue.task
    def in_thread(ctx: Context) -> str:
        return str(ctx.state["pool"])

    @queue.task
    async def last(ctx: Context) -> None:
        await gate.wait()
        events.append("last job done")

    async with queue:
        jobs = [await on_loop.enqueue(), await in_thread.enqueue()]
        async with queue.worker(concurrency=2, grace=10) as worker:
            assert [await j.result(timeout=RESULT_TIMEOUT) for j in jobs] == ["the pool"] * 2
            assert worker.state["pool"] == "the pool"
            await last.enqueue()
            await wait_until(lambda: gate.entered >= 1, message="the job started")
            asyncio.get_running_loop().call_later(0.05, gate.open)
    assert events == ["start default", "job", "last job done", "stop"]


async def test_a_lifespan_that_fails_stops_the_worker_before_it_claims_anything() -> None:
    """A lifespan raising at start: StartupError with the cause, the worker is not running, and
    the waiting job is never claimed; a lifespan that yields a non-mapping fails the same way."""

    @asynccontextmanager
    async def broken(queue: Queue) -> AsyncIterator[None]:
        raise OSError("database unreachable")
        yield

    @asynccontextmanager
    async def odd(queue: Queue) -> AsyncIterator[Any]:
        yield ["not", "a", "mapping"]

    for lifespan, match in ((broken, "lifespan raised OSError: database unreachable"),
                            (odd, "yields a mapping of state or None, not list")):
        queue = Queue("memory://", lifespan=lifespan)

        @queue.task
        async def noop() -> None: ...

        async with queue:
            job = await noop.enqueue()
            worker = queue.worker()
            with pytest.raises(StartupError, match=match):
                await worker.start()
            assert worker.running == 0
            await asyncio.sleep(0.05)
            info = await job.info()
            assert (info.status, info.attempts) == ("queued", 0)


async def test_a_queue_with_a_lifespan_and_cpu_tasks_must_be_importable() -> None:
    """cpu processes run the lifespan by importing the queue: a queue that is no module-level
    global cannot start a worker when it has cpu=True tasks."""
    queue = Queue("memory://", lifespan=pool_lifespan([]))
    from integration.apps.cpu_app import burn

    queue.task(cpu=True, name="burn")(burn.fn)
    with pytest.raises(StartupError, match="module-level global"):
        async with queue, queue.worker():
            pass


def get_pool(request: Request) -> str:
    """A dependency reading lifespan state, as an endpoint's would."""
    return f"{request.state.pool}+{request.state.settings}+{request.state.shared}"


async def test_tasks_of_an_app_worker_see_the_apps_state_and_the_queues_through_depends() -> None:
    """With queue.lifespan(worker=True), a task's dependency reads request.state as an endpoint
    does: the app's lifespan state with the queue's on top; ctx.state holds the same."""
    events: list[str] = []
    queue = Queue("memory://", lifespan=pool_lifespan(events))

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("app start")
        yield {"settings": "the settings", "shared": "app"}
        events.append("app stop")

    @queue.task
    async def uses(pool: Annotated[str, Depends(get_pool)], ctx: Context) -> list[str]:
        return [pool, ctx.state["settings"], ctx.state["shared"]]

    app = FastAPI(lifespan=queue.lifespan(worker=True, lifespan=app_lifespan))
    async with client_for(app):
        job = await uses.enqueue()
        assert await job.result(timeout=RESULT_TIMEOUT) == [
            "the pool+the settings+queue", "the settings", "queue",
        ]
        assert events == ["app start", "start default"]
    assert events == ["app start", "start default", "stop", "app stop"]
