"""The router's doors: scoped to its queue, CSRF header on POSTs, loud when open, bounded pages."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException

from conveyor import Queue
from conveyor.model import JobStatus

from .fastapi_support import client_for

CSRF = {"X-Conveyor": "1"}


def make_app(queue: Queue, **router: Any) -> FastAPI:
    """An app with the queue's lifespan and its (public) router under /jobs."""
    router.setdefault("public", True)
    app = FastAPI(lifespan=queue.lifespan())
    app.include_router(queue.router(**router), prefix="/jobs")
    return app


async def _two_queues(make_queue: Any) -> tuple[Queue, Queue]:
    """Queues "a" and "b" on one store (memory:// keeps a store per Queue object: share it)."""
    a, b = make_queue("a"), make_queue("b")
    if make_queue.backend == "memory":
        b.backend = a.backend
    return a, b


async def test_router_serves_only_its_own_queue(make_queue: Any) -> None:
    """A job of another queue on the same backend is a 404 on every route and is left unchanged."""
    a, b = await _two_queues(make_queue)

    @a.task(name="work")
    async def work_a() -> None: ...

    @b.task(name="work")
    async def work_b() -> None: ...

    mine = await work_a.enqueue()
    waiting = await work_b.enqueue()
    cancelled = await work_b.enqueue()
    await cancelled.cancel()
    before = {j.id: (await j.info()).to_dict() for j in (waiting, cancelled)}
    async with client_for(make_app(a)) as client:
        assert (await client.get(f"/jobs/{mine.id}")).status_code == 200
        for job in (waiting, cancelled):
            for method, suffix in [("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("POST", "/retry")]:
                response = await client.request(method, f"/jobs/{job.id}{suffix}", headers=CSRF)
                assert response.status_code == 404, (method, suffix, response.text)
        listed = (await client.get("/jobs")).json()["items"]
        assert [j["id"] for j in listed] == [mine.id]
        for status in ("queued", "cancelled"):
            items = (await client.get("/jobs", params={"status": status})).json()["items"]
            assert all(j["queue"] == "a" for j in items)
    assert {j.id: (await j.info()).to_dict() for j in (waiting, cancelled)} == before
    assert await waiting.status() is JobStatus.QUEUED
    assert await cancelled.status() is JobStatus.CANCELLED


async def test_post_without_the_csrf_header_is_refused(queue: Queue) -> None:
    """Cancel and retry without ``X-Conveyor`` are a 403 and change nothing; with it they work."""

    @queue.task
    async def noop() -> None: ...

    job = await noop.enqueue()
    async with client_for(make_app(queue)) as client:
        for action in ("cancel", "retry"):
            refused = await client.post(f"/jobs/{job.id}/{action}")
            assert refused.status_code == 403, refused.text
            assert "X-Conveyor" in refused.json()["detail"]
            empty = await client.post(f"/jobs/{job.id}/{action}", headers={"X-Conveyor": ""})
            assert empty.status_code == 403
        assert await job.status() is JobStatus.QUEUED
        done = await client.post(f"/jobs/{job.id}/cancel", headers=CSRF)
        assert done.status_code == 200 and done.json()["status"] == "cancelled"
        again = await client.post(f"/jobs/{job.id}/retry", headers=CSRF)
        assert again.status_code == 200 and again.json()["status"] == "queued"


async def test_auth_runs_before_the_csrf_check(queue: Queue) -> None:
    """Without credentials a POST is a 401 from the app's guard, whatever its headers."""

    def api_key(x_api_key: str = Header(default="")) -> None:
        if x_api_key != "k":
            raise HTTPException(401, "no key")

    @queue.task
    async def noop() -> None: ...

    job = await noop.enqueue()
    app = make_app(queue, dependencies=[Depends(api_key)], public=False)
    async with client_for(app) as client:
        assert (await client.post(f"/jobs/{job.id}/cancel")).status_code == 401
        assert (await client.post(f"/jobs/{job.id}/cancel", headers={"X-Api-Key": "k"})).status_code == 403
        ok = await client.post(f"/jobs/{job.id}/cancel", headers={"X-Api-Key": "k", **CSRF})
        assert ok.status_code == 200


def test_an_open_router_warns_unless_public(caplog: pytest.LogCaptureFixture) -> None:
    """A router without dependencies logs a warning; ``public=True`` or a guard silences it."""
    queue = Queue("memory://", name="mail")
    with caplog.at_level(logging.WARNING, logger="conveyor.fastapi"):
        queue.router()
    warnings = [r for r in caplog.records if r.name == "conveyor.fastapi"]
    assert len(warnings) == 1 and "mail" in warnings[0].getMessage()
    assert "dependencies" in warnings[0].getMessage() and "public=True" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="conveyor.fastapi"):
        queue.router(public=True)
        queue.router(dependencies=[Depends(lambda: None)])
    assert [r for r in caplog.records if r.name == "conveyor.fastapi"] == []


async def test_list_offset_is_bounded(queue: Queue) -> None:
    """``offset`` above 10,000 is a 422: no request walks a whole queue."""

    @queue.task
    async def noop() -> None: ...

    await noop.enqueue()
    async with client_for(make_app(queue)) as client:
        assert (await client.get("/jobs", params={"offset": 10_000})).status_code == 200
        assert (await client.get("/jobs", params={"offset": 10_001})).status_code == 422
        assert (await client.get("/jobs", params={"limit": 501})).status_code == 422


async def test_a_message_with_a_lone_surrogate_is_still_served(queue: Queue) -> None:
    """A task's error or progress text that is not valid Unicode is served (U+FFFD), never a 500."""
    from conveyor.backends.base import Lease

    @queue.task
    async def noop() -> None: ...

    job = await noop.enqueue()
    await queue.open()
    (claimed,) = await queue.backend.claim([queue.name], "w", 1, 30.0)
    lease = Lease(claimed.id, claimed.lease_token or "")
    assert await queue.backend.progress(lease, 0.5, "file \udcff.txt")
    error = {"type": "FileNotFoundError", "message": "no \udcff.txt", "traceback": "tb \ud800"}
    assert await queue.backend.fail(lease, error, retry_at=None)  # type: ignore[arg-type]
    async with client_for(make_app(queue)) as client:
        one = await client.get(f"/jobs/{job.id}")
        assert one.status_code == 200
        assert one.json()["error"]["message"] == "no \ufffd.txt"
        assert one.json()["progress"]["message"] == "file \ufffd.txt"
        assert (await client.get("/jobs")).status_code == 200
        async with client.stream("GET", f"/jobs/{job.id}/events") as stream:
            body = (await stream.aread()).decode()
        assert "\\udcff" in body and "failed" in body


async def test_event_positions_past_64_bits_are_refused(queue: Queue) -> None:
    """A Last-Event-ID or ?after= beyond a 64-bit seq is a 422, never a 500 from the store."""

    @queue.task
    async def noop() -> None: ...

    job = await noop.enqueue()
    async with client_for(make_app(queue)) as client:
        huge = str(2**70)
        by_header = await client.get(f"/jobs/{job.id}/events", headers={"Last-Event-ID": huge})
        by_query = await client.get(f"/jobs/{job.id}/events", params={"after": huge})
        assert (by_header.status_code, by_query.status_code) == (422, 422)
