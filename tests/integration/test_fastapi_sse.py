"""``GET /jobs/{id}/events``: Server-Sent Events over a real uvicorn server, with Last-Event-ID."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conveyor import Context, Queue
from conveyor.model import JobStatus

from .fastapi_support import SSE, live_server, read_events


def make_app(queue: Queue, heartbeat: float = 15.0) -> FastAPI:
    """An app running a worker, with the job router under /jobs."""
    app = FastAPI(lifespan=queue.lifespan(worker=True))
    app.include_router(queue.router(heartbeat=heartbeat), prefix="/jobs")
    return app


class Steps:
    """A task body that reports progress one step at a time, when the test says so."""

    def __init__(self) -> None:
        self.go = asyncio.Queue[str]()

    async def run(self, ctx: Context, steps: int) -> str:
        for i in range(1, steps + 1):
            if await self.go.get() == "fail":
                raise RuntimeError("conversion broke")
            await ctx.progress(i / steps, f"step {i}")
        return "converted"


def register(queue: Queue, steps: Steps) -> Any:
    """Register the stepping task on ``queue``."""

    @queue.task(name="convert")
    async def convert(n: int, ctx: Context) -> str:
        return await steps.run(ctx, n)

    return convert


async def take(events: AsyncIterator[SSE], n: int) -> list[SSE]:
    """The next ``n`` events that carry data (keep-alive comments skipped)."""
    out: list[SSE] = []
    async for event in events:
        if event.data:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_stream_replays_then_follows_live_and_ends(queue: Queue) -> None:
    """A client joining late gets past events first, then live progress, and the stream ends."""
    steps = Steps()
    convert = register(queue, steps)
    async with live_server(make_app(queue)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        job = await convert.enqueue(3)
        steps.go.put_nowait("go")  # step 1 happens before anyone watches
        async with client.stream("GET", f"/jobs/{job.id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            events = read_events(response.aiter_lines())
            first = await take(events, 3)
            assert [e.event for e in first] == ["status", "status", "progress"]
            assert [e.json()["data"].get("status") for e in first[:2]] == ["queued", "running"]
            assert first[2].json()["data"] == {"fraction": pytest.approx(1 / 3), "message": "step 1"}
            steps.go.put_nowait("go")
            steps.go.put_nowait("go")
            rest = [e async for e in events if e.data]
        seqs = [int(e.id or 0) for e in first + rest]
        assert seqs == list(range(1, len(seqs) + 1)), "every event once, in order"
        assert [e.json()["data"]["message"] for e in rest if e.event == "progress"] == ["step 2", "step 3"]
        assert rest[-1].event == "status" and rest[-1].json()["data"]["status"] == "succeeded"
        assert all(e.json()["job_id"] == job.id for e in first + rest)


async def test_reconnect_with_last_event_id_continues_where_it_left(queue: Queue) -> None:
    """A client that drops and reconnects with Last-Event-ID misses nothing and repeats nothing."""
    steps = Steps()
    convert = register(queue, steps)
    async with live_server(make_app(queue)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        job = await convert.enqueue(4)
        steps.go.put_nowait("go")
        async with client.stream("GET", f"/jobs/{job.id}/events") as response:
            seen = await take(read_events(response.aiter_lines()), 3)
        last = seen[-1].id
        assert last == "3"
        steps.go.put_nowait("go")  # happens while disconnected
        steps.go.put_nowait("go")
        headers = {"Last-Event-ID": last}
        async with client.stream("GET", f"/jobs/{job.id}/events", headers=headers) as response:
            events = read_events(response.aiter_lines())
            resumed = await take(events, 2)
            assert [e.json()["data"]["message"] for e in resumed] == ["step 2", "step 3"]
            steps.go.put_nowait("fail")
            tail = [e async for e in events if e.data]
        ids = [int(e.id or 0) for e in seen + resumed + tail]
        assert ids == list(range(1, len(ids) + 1))
        final = tail[-1].json()["data"]
        assert final["status"] == "failed" and final["error"]["message"] == "conversion broke"
        # the same through the query parameter, for clients that cannot set headers
        replay = await client.get(f"/jobs/{job.id}/events", params={"after": ids[-2]})
        events_after = [e async for e in read_events(_lines(replay.text)) if e.data]
        assert [e.id for e in events_after] == [str(ids[-1])]


async def _lines(text: str) -> AsyncIterator[str]:
    for line in text.split("\n"):
        yield line


async def test_finished_job_streams_history_then_204_once_seen(queue: Queue) -> None:
    """A finished job's stream replays its events and ends; once all are seen the answer is 204."""
    steps = Steps()
    convert = register(queue, steps)
    async with live_server(make_app(queue)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        job = await convert.enqueue(1)
        steps.go.put_nowait("go")
        await job.result(timeout=10)
        response = await client.get(f"/jobs/{job.id}/events")
        events = [e async for e in read_events(_lines(response.text)) if e.data]
        assert events[-1].json()["data"]["status"] == "succeeded"
        assert response.text.startswith("retry: ")
        done = await client.get(f"/jobs/{job.id}/events", headers={"Last-Event-ID": events[-1].id or ""})
        assert done.status_code == 204 and done.content == b""


async def test_idle_stream_sends_keepalive_comments(queue: Queue) -> None:
    """While nothing happens the stream sends comments, so proxies keep it and gone clients show."""
    steps = Steps()
    convert = register(queue, steps)
    app = make_app(queue, heartbeat=0.1)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        job = await convert.enqueue(1)
        async with client.stream("GET", f"/jobs/{job.id}/events") as response:
            events = read_events(response.aiter_lines())
            pings = 0
            async for event in events:
                if event.comments and not event.data:
                    pings += 1
                    if pings == 2:
                        break
        steps.go.put_nowait("go")
        await job.result(timeout=10)
    assert pings == 2


async def test_bad_last_event_id_is_422(queue: Queue) -> None:
    """A Last-Event-ID that is not a non-negative integer is a 422, not a 500."""

    @queue.task
    async def noop() -> None: ...

    job = await noop.enqueue()
    async with live_server(make_app(queue)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        for bad in ("abc", "-1", "1.5"):
            response = await client.get(f"/jobs/{job.id}/events", headers={"Last-Event-ID": bad})
            assert response.status_code == 422, bad
        await job.result(timeout=10)
    assert await job.status() is JobStatus.SUCCEEDED


async def test_stream_of_a_retried_job_goes_past_its_old_verdict(
    queue: Queue, wait_until: Callable[..., Awaitable[Any]]
) -> None:
    """A job retried by hand replays its earlier failure, then follows the new run to its end."""
    steps = Steps()
    convert = register(queue, steps)
    async with live_server(make_app(queue)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        job = await convert.enqueue(1)
        steps.go.put_nowait("fail")
        await wait_until(lambda: _has_status(job, JobStatus.FAILED), 10, message="the job failed")
        assert (await client.post(f"/jobs/{job.id}/retry", headers={"X-Conveyor": "1"})).status_code == 200
        async with client.stream("GET", f"/jobs/{job.id}/events") as response:
            events = read_events(response.aiter_lines())
            statuses: list[str] = []
            async for event in events:
                if event.event == "status":
                    statuses.append(event.json()["data"]["status"])
                    if statuses[-1] == "running" and "failed" in statuses:
                        steps.go.put_nowait("go")
        assert statuses[statuses.index("failed") + 1:][-1] == "succeeded", statuses
        assert statuses.count("failed") == 1


async def _has_status(job: Any, wanted: JobStatus) -> bool:
    return await job.status() is wanted
