"""``queue.lifespan()``: the queue opens and closes with the app; a worker may run and drain in it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from conveyor import Context, Queue
from conveyor.model import JobStatus

from .fastapi_support import client_for, live_server


async def test_worker_in_the_app_runs_jobs_enqueued_by_endpoints(queue: Queue) -> None:
    """With ``worker=True`` a job enqueued from an endpoint runs inside the app's process."""

    @queue.task
    async def double(n: int) -> int:
        return 2 * n

    app = FastAPI(lifespan=queue.lifespan(worker=True, concurrency=4))

    @app.post("/double/{n}")
    async def endpoint(n: int) -> dict[str, str]:
        return {"job": (await double.enqueue(n)).id}

    async with client_for(app) as client:
        job_id = (await client.post("/double/21")).json()["job"]
        assert await queue.job(job_id).result(timeout=10) == 42


async def test_lifespan_without_worker_only_opens_and_closes(queue: Queue) -> None:
    """Without a worker the backend is opened for endpoints and closed at shutdown; nothing runs."""

    @queue.task
    async def never(n: int) -> int:
        return n

    lifespan = queue.lifespan()
    app = FastAPI(lifespan=lifespan)

    @app.post("/enqueue")
    async def endpoint() -> dict[str, str]:
        return {"job": (await never.enqueue(1)).id}

    async with client_for(app) as client:
        assert queue._opened and lifespan.worker is None
        job_id = (await client.post("/enqueue")).json()["job"]
        assert await queue.job(job_id).status() is JobStatus.QUEUED
    assert not queue._opened
    assert await queue.job(job_id).status() is JobStatus.QUEUED


async def test_composes_with_the_apps_own_lifespan(
    queue: Queue, wait_until: Callable[..., Awaitable[Any]]
) -> None:
    """The app's lifespan starts before the worker and ends after it has drained; its state flows."""
    steps: list[str] = []
    release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        steps.append("app startup")
        yield {"pool": "pool-1"}
        steps.append("app shutdown")

    @queue.task
    async def slow() -> str:
        steps.append("job started")
        await release.wait()
        steps.append("job finished")
        return "done"

    lifespan = queue.lifespan(worker=True, grace=10, lifespan=app_lifespan)
    app = FastAPI(lifespan=lifespan)

    @app.get("/pool")
    async def pool(request: Request) -> dict[str, str]:
        return {"pool": request.state.pool}

    async with live_server(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/pool")).json() == {"pool": "pool-1"}
        assert lifespan.worker is not None and steps == ["app startup"]
        job = await slow.enqueue()
        await wait_until(lambda: "job started" in steps, 10, message="the job started")
        asyncio.get_running_loop().call_later(0.2, release.set)
    # leaving live_server shut the app down: the running job finished before the app's lifespan ended
    assert steps == ["app startup", "job started", "job finished", "app shutdown"]
    assert await job.status() is JobStatus.SUCCEEDED
    assert lifespan.worker is None


async def test_nested_in_the_apps_lifespan(queue: Queue) -> None:
    """``async with queue.lifespan(worker=True)(app)`` inside the app's own lifespan works too."""

    @queue.task
    async def echo(text: str) -> str:
        return text

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with queue.lifespan(worker=True)(app):
            yield

    app = FastAPI(lifespan=app_lifespan)
    async with client_for(app):
        assert queue.app is app
        assert await (await echo.enqueue("hi")).result(timeout=10) == "hi"
    assert queue.app is None


async def test_shutdown_releases_jobs_that_outlast_the_grace(queue: Queue) -> None:
    """A job still running when the grace period ends is put back, not lost, and not counted."""
    started = asyncio.Event()

    @queue.task
    async def endless(ctx: Context) -> None:
        started.set()
        await asyncio.Event().wait()

    app = FastAPI(lifespan=queue.lifespan(worker=True, grace=0.2))
    async with client_for(app):
        job = await endless.enqueue()
        await asyncio.wait_for(started.wait(), 10)
    record = await job.info()
    assert record.status is JobStatus.QUEUED
    assert record.attempts == 0


async def test_lifespan_sets_and_clears_queue_app(queue: Queue) -> None:
    """``queue.app`` is the app while it runs; an app set by hand is left alone."""
    app = FastAPI(lifespan=queue.lifespan())
    async with client_for(app):
        assert queue.app is app
    assert queue.app is None
    mine = object()
    queue.app = mine
    async with client_for(app):
        assert queue.app is mine
    assert queue.app is mine


@pytest.mark.parametrize("worker", [False, True])
async def test_startup_failure_of_the_app_closes_nothing_it_did_not_open(
    queue: Queue, worker: bool
) -> None:
    """If the app's own lifespan fails at startup, no worker is left running."""

    @contextlib.asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("database down")
        yield  # pragma: no cover

    lifespan = queue.lifespan(worker=worker, lifespan=broken)
    with pytest.raises(RuntimeError, match="database down"):
        async with lifespan(FastAPI()):
            pass
    assert lifespan.worker is None and not queue._opened
