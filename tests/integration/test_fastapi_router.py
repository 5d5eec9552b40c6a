"""The job router: list, get, cancel, retry, stats, dashboard page, auth, OpenAPI; bad ids."""

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from conveyor import Context, Queue, Retry
from conveyor.errors import EnqueueError
from conveyor.model import JobStatus

from .fastapi_support import client_for

Wait = Callable[..., Awaitable[Any]]
UNKNOWN_ID = "01936f4e-8a1b-7c3d-9e2f-0a1b2c3d4e5f"
#: the header the router requires on every POST (the dashboard sends it)
CSRF = {"X-Conveyor": "1"}


def make_app(queue: Queue, *, worker: bool = False, **router: Any) -> FastAPI:
    """An app with the queue's lifespan and its router under /jobs."""
    app = FastAPI(lifespan=queue.lifespan(worker=worker))
    app.include_router(queue.router(**router), prefix="/jobs")
    return app


async def test_get_returns_the_job_record_as_json(queue: Queue) -> None:
    """``GET /jobs/{id}`` serves every field of the record, its meta too."""

    @queue.task(key="user:{user_id}")
    async def greet(user_id: int, text: str = "hi") -> None: ...

    job = await greet.options(priority=3, meta={"tenant": "acme"}).enqueue(7, text="hello")
    async with client_for(make_app(queue)) as client:
        response = await client.get(f"/jobs/{job.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == job.id and body["status"] == "queued"
    assert body["meta"] == {"tenant": "acme"}
    assert body["args"] + list(body["kwargs"].values()) == [7, "hello"]
    assert body["key"] == "user:7" and body["priority"] == 3
    assert (await client_get_upper(queue, job.id)) == 200, "ids are accepted in upper case"
    for name in ("task", "queue", "unique", "attempts", "max_attempts", "enqueued_at", "scheduled_for",
                 "started_at", "finished_at", "result", "error", "progress"):
        assert name in body


async def client_get_upper(queue: Queue, job_id: str) -> int:
    """The status code of ``GET /jobs/{ID}`` with the id in upper case."""
    async with client_for(make_app(queue)) as client:
        return (await client.get(f"/jobs/{job_id.upper()}")).status_code


@pytest.mark.parametrize("bad", ["not-a-uuid", "123", "01936f4e8a1b7c3d9e2f0a1b2c3d4e5f", "x" * 36])
async def test_malformed_id_is_422_and_unknown_id_is_404(queue: Queue, bad: str) -> None:
    """A malformed id is a 422 on every route; a well-formed unknown id is a 404."""
    async with client_for(make_app(queue)) as client:
        for method, suffix in [("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("POST", "/retry")]:
            malformed = await client.request(method, f"/jobs/{bad}{suffix}", headers=CSRF)
            assert malformed.status_code == 422, (method, suffix, malformed.text)
            unknown = await client.request(method, f"/jobs/{UNKNOWN_ID}{suffix}", headers=CSRF)
            assert unknown.status_code == 404, (method, suffix, unknown.text)
            assert UNKNOWN_ID in unknown.json()["detail"]


async def test_list_is_newest_first_filtered_and_paginated(queue: Queue) -> None:
    """``GET /jobs`` filters by status and task and pages with limit/offset/next_offset."""

    @queue.task
    async def alpha(n: int) -> None: ...

    @queue.task
    async def beta(n: int) -> None: ...

    ids = [(await alpha.enqueue(i)).id for i in range(5)] + [(await beta.enqueue(9)).id]
    await queue.job(ids[0]).cancel()
    async with client_for(make_app(queue)) as client:
        first = (await client.get("/jobs", params={"limit": 4})).json()
        assert [j["id"] for j in first["items"]] == ids[::-1][:4]
        assert first["next_offset"] == 4
        rest = (await client.get("/jobs", params={"limit": 4, "offset": 4})).json()
        assert [j["id"] for j in rest["items"]] == ids[::-1][4:]
        assert rest["next_offset"] is None
        only_beta = (await client.get("/jobs", params={"task": beta.name})).json()["items"]
        assert [j["id"] for j in only_beta] == [ids[5]]
        cancelled = (await client.get("/jobs", params={"status": "cancelled"})).json()["items"]
        assert [j["id"] for j in cancelled] == [ids[0]]
        for bad in ({"status": "exploded"}, {"limit": 0}, {"limit": 100000}, {"offset": -1}):
            assert (await client.get("/jobs", params=bad)).status_code == 422, bad


async def test_stats_counts_jobs_by_status(queue: Queue) -> None:
    """``GET /jobs/stats`` has every status and the total."""

    @queue.task
    async def noop() -> None: ...

    jobs = [await noop.enqueue() for _ in range(3)]
    await jobs[0].cancel()
    async with client_for(make_app(queue)) as client:
        stats = (await client.get("/jobs/stats")).json()
    assert stats["queue"] == queue.name and stats["total"] == 3
    assert stats["counts"]["queued"] == 2 and stats["counts"]["cancelled"] == 1
    assert set(stats["counts"]) == {s.value for s in JobStatus}


async def test_cancel_a_queued_job_and_a_running_one(queue: Queue, wait_until: Wait) -> None:
    """``POST cancel`` stops a waiting job at once and a running one through its worker."""
    started = asyncio.Event()

    @queue.task
    async def hang(ctx: Context) -> None:
        started.set()
        await asyncio.Event().wait()

    @queue.task
    async def later() -> None: ...

    async with client_for(make_app(queue, worker=True)) as client:
        running = await hang.enqueue()
        await asyncio.wait_for(started.wait(), 10)
        waiting = await later.options(delay=60).enqueue()
        body = (await client.post(f"/jobs/{waiting.id}/cancel", headers=CSRF)).json()
        assert body["status"] == "cancelled"
        again = await client.post(f"/jobs/{waiting.id}/cancel", headers=CSRF)
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        body = (await client.post(f"/jobs/{running.id}/cancel", headers=CSRF)).json()
        assert body["status"] in ("running", "cancelled")
        await wait_until(
            lambda: _status_is(running.status, JobStatus.CANCELLED), 10, message="cancelled"
        )


async def _status_is(status: Callable[[], Awaitable[JobStatus]], wanted: JobStatus) -> bool:
    return await status() is wanted


async def test_cancel_a_finished_job_is_a_conflict(queue: Queue) -> None:
    """Cancelling a succeeded job is a 409 and changes nothing."""

    @queue.task
    async def quick() -> int:
        return 1

    async with client_for(make_app(queue, worker=True)) as client:
        job = await quick.enqueue()
        await job.result(timeout=10)
        response = await client.post(f"/jobs/{job.id}/cancel", headers=CSRF)
        assert response.status_code == 409 and "succeeded" in response.json()["detail"]
        assert await job.status() is JobStatus.SUCCEEDED


async def test_retry_puts_a_dead_job_back(queue: Queue, wait_until: Wait) -> None:
    """``POST retry`` re-queues a dead job, which runs again; retrying a live job is a 409."""
    outcomes = ["fail", "fail", "ok"]

    @queue.task(retries=Retry(attempts=2, backoff=0.01))
    async def shaky() -> str:
        if outcomes.pop(0) == "fail":
            raise ConnectionError("mail server down")
        return "sent"

    async with client_for(make_app(queue, worker=True)) as client:
        job = await shaky.enqueue()
        await wait_until(lambda: _status_is(job.status, JobStatus.DEAD), 10, message="dead")
        dead = (await client.get(f"/jobs/{job.id}")).json()
        assert dead["error"]["type"] == "ConnectionError"
        assert "mail server down" in dead["error"]["traceback"]
        retried = await client.post(f"/jobs/{job.id}/retry", headers=CSRF)
        assert retried.status_code == 200 and retried.json()["status"] in ("queued", "running", "succeeded")
        assert await job.result(timeout=10) == "sent"
        conflict = await client.post(f"/jobs/{job.id}/retry", headers=CSRF)
        assert conflict.status_code == 409 and "succeeded" in conflict.json()["detail"]


async def test_no_get_changes_state(queue: Queue) -> None:
    """Every GET route leaves every job exactly as it was."""

    @queue.task
    async def noop() -> None: ...

    jobs = [await noop.enqueue() for _ in range(3)]
    await jobs[1].cancel()
    before = [(await j.info()).to_dict() for j in jobs]
    async with client_for(make_app(queue, dashboard=True)) as client:
        for path in ["/jobs", "/jobs/stats", "/jobs/ui", f"/jobs/{jobs[0].id}",
                     f"/jobs/{jobs[1].id}/events", "/jobs?status=queued"]:
            assert (await client.get(path)).status_code == 200, path
        for path in ["/jobs/ui", f"/jobs/{jobs[0].id}/events"]:
            assert (await client.head(path)).status_code in (200, 405), path
    assert [(await j.info()).to_dict() for j in jobs] == before


async def test_router_dependencies_guard_every_route(queue: Queue) -> None:
    """``queue.router(dependencies=[Depends(auth)])`` protects the API and the dashboard alike."""
    basic = HTTPBasic()

    def admin(credentials: Annotated[HTTPBasicCredentials, Depends(basic)]) -> str:
        if not secrets.compare_digest(credentials.password.encode(), b"s3cret"):
            raise HTTPException(401, "wrong password", headers={"WWW-Authenticate": "Basic"})
        return credentials.username

    @queue.task
    async def noop() -> None: ...

    job = await noop.enqueue()
    app = make_app(queue, dashboard=True, dependencies=[Depends(admin)])
    routes = [("GET", "/jobs"), ("GET", "/jobs/stats"), ("GET", "/jobs/ui"), ("GET", f"/jobs/{job.id}"),
              ("POST", f"/jobs/{job.id}/retry"), ("POST", f"/jobs/{job.id}/cancel")]
    async with client_for(app) as client:
        for method, path in routes:
            assert (await client.request(method, path, headers=CSRF)).status_code == 401, path
            wrong = await client.request(method, path, auth=("ops", "guess"), headers=CSRF)
            assert wrong.status_code == 401, path
        for method, path in routes:
            ok = await client.request(method, path, auth=("ops", "s3cret"), headers=CSRF)
            assert ok.status_code in (200, 409), (path, ok.text)
        assert (await client.get(f"/jobs/{job.id}/events")).status_code == 401
    assert await job.status() is JobStatus.CANCELLED


async def test_dashboard_page_is_served_only_when_asked(queue: Queue) -> None:
    """``dashboard=True`` adds ``/ui``: HTML with a CSP and the queue name escaped."""
    hostile = Queue(queue.url, name='<script>alert("q")</script>')
    async with client_for(make_app(hostile, dashboard=True)) as client:
        page = await client.get("/jobs/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>alert" not in page.text and "&lt;script&gt;alert(&quot;q&quot;)" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert page.text.count(f'nonce="{nonce}"') == 2
    assert "https://" not in page.text and "http://" not in page.text, "no CDN: works offline"
    async with client_for(make_app(queue)) as client:
        assert (await client.get("/jobs/ui")).status_code != 200
    await hostile.close()


async def test_openapi_documents_the_router(queue: Queue) -> None:
    """Every route appears in the app's OpenAPI schema with its pydantic response model."""
    app = make_app(queue, dashboard=True)
    spec = app.openapi()
    paths = spec["paths"]
    assert set(paths) >= {"/jobs", "/jobs/stats", "/jobs/ui", "/jobs/{job_id}", "/jobs/{job_id}/events",
                          "/jobs/{job_id}/cancel", "/jobs/{job_id}/retry"}

    def ref(path: str, method: str, code: str = "200") -> str:
        content = paths[path][method]["responses"][code]["content"]
        return str(content["application/json"]["schema"]["$ref"])

    assert ref("/jobs", "get").endswith("/JobPage")
    assert ref("/jobs/stats", "get").endswith("/StatsOut")
    assert ref("/jobs/{job_id}", "get").endswith("/JobOut")
    assert ref("/jobs/{job_id}", "get", "404").endswith("/ProblemOut")
    assert ref("/jobs/{job_id}/cancel", "post").endswith("/JobOut")
    assert ref("/jobs/{job_id}/retry", "post", "409").endswith("/ProblemOut")
    stream = paths["/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert stream["itemSchema"]["properties"]["data"]["contentSchema"]["title"] == "JobEventOut"
    assert {"JobOut", "JobPage", "StatsOut", "ErrorOut", "ProgressOut"} <= set(spec["components"]["schemas"])


async def test_enqueueing_a_db_session_says_to_pass_an_id(queue: Queue) -> None:
    """Passing the request's DB session to enqueue raises EnqueueError suggesting an id."""

    class AsyncSession:
        """What an endpoint gets from ``Depends(get_db)``."""

    async def get_db() -> AsyncSession:
        return AsyncSession()

    @queue.task
    async def send_welcome(user: Any) -> None: ...

    app = make_app(queue)
    seen: list[EnqueueError] = []

    @app.post("/users")
    async def create_user(request: Request, db: Annotated[AsyncSession, Depends(get_db)]) -> dict[str, str]:
        try:
            await send_welcome.enqueue(db)
        except EnqueueError as exc:
            seen.append(exc)
            raise
        return {}

    async with client_for(app) as client:
        with pytest.raises(EnqueueError):
            await client.post("/users")
        assert (await client.get("/jobs")).json()["items"] == [], "nothing was written"
    (error,) = seen
    assert "AsyncSession" in str(error) and "an id" in str(error)
