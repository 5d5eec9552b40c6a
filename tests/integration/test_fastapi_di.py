"""FastAPI dependencies in tasks: resolved by FastAPI per attempt, cleaned up after each one."""

# no `from __future__ import annotations`: the dependencies below are local to each test, and
# FastAPI (like conveyor) resolves string annotations in the module globals only

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Request

from conveyor import Context, Queue
from conveyor.errors import ArgumentError, ConfigError, JobFailed
from conveyor.fastapi import JobContext

from .fastapi_support import client_for


class Session:
    """A stand-in for a database session: knows whether it is open and what was committed."""

    made = 0

    def __init__(self, attempt: int) -> None:
        Session.made += 1
        self.number = Session.made
        self.attempt = attempt
        self.closed = False
        self.rolled_back = False
        self.thread = threading.get_ident()


async def test_every_kind_of_dependency_is_resolved(queue: Queue) -> None:
    """Annotated and default-style Depends, sub-dependencies, async/sync/generator ones all resolve."""
    calls: list[str] = []

    def settings() -> dict[str, str]:
        calls.append("settings")
        return {"dsn": "memory"}

    async def engine(conf: Annotated[dict[str, str], Depends(settings)]) -> str:
        calls.append("engine")
        return f"engine:{conf['dsn']}"

    def sync_gen(eng: Annotated[str, Depends(engine)]) -> Iterator[str]:
        calls.append("sync_gen open")
        yield f"conn({eng})"
        calls.append("sync_gen close")

    async def async_gen(conf: Annotated[dict[str, str], Depends(settings)]) -> AsyncIterator[str]:
        calls.append("async_gen open")
        yield f"client({conf['dsn']})"
        calls.append("async_gen close")

    @queue.task
    async def report(
        n: int,
        conn: Annotated[str, Depends(sync_gen)],
        client: str = Depends(async_gen),  # FastAPI's other style: the marker as the default
        conf: dict[str, str] = Depends(settings),  # noqa: B008
    ) -> list[Any]:
        calls.append("task")
        return [n, conn, client, conf]

    async with queue.lifespan(worker=True)(FastAPI()):
        job = await report.enqueue(1)
        assert await job.result(timeout=10) == [
            1, "conn(engine:memory)", "client(memory)", {"dsn": "memory"},
        ]
    assert calls.count("settings") == 1, "settings is cached within the attempt"
    assert calls.index("task") < calls.index("sync_gen close")
    assert calls.index("task") < calls.index("async_gen close")


async def test_dependency_params_are_not_part_of_the_payload(queue: Queue) -> None:
    """A dependency parameter is neither stored nor required at enqueue, and cannot be passed."""

    def get_db() -> str:
        return "db"

    @queue.task
    async def store(item: str, db: Annotated[str, Depends(get_db)]) -> str:
        return f"{item}@{db}"

    job = await store.enqueue("x")
    record = await job.info()
    assert record.args == ["x"] and record.kwargs == {}
    with pytest.raises(ArgumentError):
        await store.enqueue("x", db="mine")  # type: ignore[call-arg]
    async with queue.lifespan(worker=True)(FastAPI()):
        assert await job.result(timeout=10) == "x@db"


async def test_each_attempt_gets_a_fresh_session_closed_after_it(queue: Queue) -> None:
    """A generator dependency is closed after every attempt and sees the attempt's exception."""
    sessions: list[Session] = []

    async def get_db(ctx: JobContext) -> AsyncIterator[Session]:
        session = Session(ctx.attempt)
        sessions.append(session)
        try:
            yield session
        except Exception:
            session.rolled_back = True
            raise
        finally:
            session.closed = True

    @queue.task(retries=2)
    async def flaky(db: Annotated[Session, Depends(get_db)]) -> int:
        assert not db.closed, "the task never sees a closed session"
        if db.attempt == 1:
            raise RuntimeError("first attempt fails")
        return db.number

    async with queue.lifespan(worker=True)(FastAPI()):
        job = await flaky.enqueue()
        number = await job.result(timeout=10)
    assert [s.attempt for s in sessions] == [1, 2]
    assert sessions[0] is not sessions[1] and number == sessions[1].number
    assert all(s.closed for s in sessions)
    assert sessions[0].rolled_back and not sessions[1].rolled_back


async def test_use_cache_false_calls_the_dependency_again(queue: Queue) -> None:
    """``Depends(..., use_cache=False)`` is called once per use, the default once per attempt."""
    counter = {"n": 0}

    def token() -> int:
        counter["n"] += 1
        return counter["n"]

    @queue.task
    async def pair(
        a: Annotated[int, Depends(token)],
        b: Annotated[int, Depends(token)],
        c: Annotated[int, Depends(token, use_cache=False)],
    ) -> list[int]:
        return [a, b, c]

    async with queue.lifespan(worker=True)(FastAPI()):
        first = await (await pair.enqueue()).result(timeout=10)
        second = await (await pair.enqueue()).result(timeout=10)
    assert first[0] == first[1] != first[2]
    assert second[0] not in first, "the cache lives for one attempt only"


async def test_sync_task_runs_with_its_dependencies_in_a_thread(queue: Queue) -> None:
    """A plain ``def`` task gets its dependencies too, and runs off the event loop."""
    loop_thread = threading.get_ident()

    def get_db() -> Iterator[Session]:
        session = Session(1)
        yield session
        session.closed = True

    @queue.task
    def blocking(db: Annotated[Session, Depends(get_db)]) -> list[bool]:
        return [db.closed, threading.get_ident() == loop_thread]

    async with queue.lifespan(worker=True)(FastAPI()):
        assert await (await blocking.enqueue()).result(timeout=10) == [False, False]


async def test_same_dependency_serves_endpoints_and_tasks(queue: Queue) -> None:
    """One ``get_db`` serves an endpoint and the task it enqueues; each gets its own session."""
    opened: list[str] = []

    async def get_db(request: Request) -> AsyncIterator[str]:
        name = f"session-{len(opened) + 1}"
        opened.append(f"{name} for {request.url.path}")
        yield name

    @queue.task
    async def welcome(user_id: int, db: Annotated[str, Depends(get_db)]) -> str:
        return f"user {user_id} via {db}"

    app = FastAPI(lifespan=queue.lifespan(worker=True))

    @app.post("/users/{user_id}")
    async def create(user_id: int, db: Annotated[str, Depends(get_db)]) -> dict[str, str]:
        job = await welcome.enqueue(user_id)
        return {"db": db, "job": job.id}

    async with client_for(app) as client:
        body = (await client.post("/users/7")).json()
        assert body["db"] == "session-1"
        assert await queue.job(body["job"]).result(timeout=10) == "user 7 via session-2"
    assert opened[0] == "session-1 for /users/7"
    assert opened[1].startswith("session-2 for /"), "the task's request is a stand-in, not the endpoint's"


async def test_app_dependency_overrides_apply_to_tasks(queue: Queue) -> None:
    """``app.dependency_overrides`` replaces a dependency in tasks as in endpoints."""

    def get_mailer() -> str:
        return "smtp"

    @queue.task
    async def send(mailer: Annotated[str, Depends(get_mailer)]) -> str:
        return mailer

    app = FastAPI(lifespan=queue.lifespan(worker=True))
    app.dependency_overrides[get_mailer] = lambda: "fake-mailer"
    async with client_for(app):
        assert await (await send.enqueue()).result(timeout=10) == "fake-mailer"


async def test_queue_dependency_overrides_win_over_the_apps(queue: Queue) -> None:
    """``queue.dependency_overrides`` works without an app and takes precedence over the app's."""

    def get_mailer() -> str:
        return "smtp"

    def sub() -> str:
        return "sub"

    @queue.task
    async def send(mailer: Annotated[str, Depends(get_mailer)]) -> str:
        return mailer

    queue.dependency_overrides[get_mailer] = lambda: "queue-fake"
    async with queue.worker():
        assert await (await send.enqueue()).result(timeout=10) == "queue-fake"

    app = FastAPI(lifespan=queue.lifespan(worker=True))
    app.dependency_overrides[get_mailer] = lambda: "app-fake"
    async with client_for(app):
        assert await (await send.enqueue()).result(timeout=10) == "queue-fake"
    queue.dependency_overrides.clear()
    async with client_for(app):
        assert await (await send.enqueue()).result(timeout=10) == "app-fake"


async def test_dependencies_see_the_app_and_the_job(queue: Queue) -> None:
    """Under the lifespan ``request.app`` is the app; ``JobContext`` is the running job's context."""

    def get_pool(request: Request) -> str:
        return str(request.app.state.pool)

    def job_info(ctx: JobContext) -> dict[str, Any]:
        return {"job_id": ctx.job_id, "task": ctx.task, "attempt": ctx.attempt}

    @queue.task
    async def inspect_it(
        ctx: Context, pool: Annotated[str, Depends(get_pool)],
        info: Annotated[dict[str, Any], Depends(job_info)],
    ) -> list[Any]:
        return [pool, info, ctx.job_id]

    app = FastAPI(lifespan=queue.lifespan(worker=True))
    app.state.pool = "pool-1"
    async with client_for(app):
        job = await inspect_it.enqueue()
        pool, info, ctx_id = await job.result(timeout=10)
    assert pool == "pool-1"
    assert info == {"job_id": job.id, "task": "test_dependencies_see_the_app_and_the_job.<locals>.inspect_it",
                    "attempt": 1}
    assert ctx_id == job.id


async def test_dependency_wanting_request_data_fails_the_job_clearly(queue: Queue) -> None:
    """A dependency that asks for a query parameter fails the job with a message saying why."""

    def paged(page: int) -> int:
        return page

    @queue.task
    async def listing(page: Annotated[int, Depends(paged)]) -> int:
        return page

    async with queue.lifespan(worker=True)(FastAPI()):
        job = await listing.enqueue()
        with pytest.raises(JobFailed) as failure:
            await job.result(timeout=10)
    assert failure.value.type == "conveyor.errors.ConfigError"
    assert "query, header, cookie or body" in failure.value.error["message"]


async def test_plain_context_param_in_a_dependency_fails_at_startup(queue: Queue) -> None:
    """A dependency declaring ``ctx: Context`` (not ``JobContext``) is refused when the app starts."""

    def needs_ctx(ctx: Context) -> str:
        return ctx.job_id

    @queue.task
    async def bad(x: Annotated[str, Depends(needs_ctx)]) -> str:
        return x

    with pytest.raises(ConfigError, match="JobContext"):
        async with queue.lifespan()(FastAPI()):
            pass


def cpu_with_dependency(x: int, db: str = Depends(lambda: "db")) -> int:
    """A cpu=True task cannot have dependencies: it runs in another process."""
    return x


async def test_cpu_task_with_dependencies_is_refused_at_startup(queue: Queue) -> None:
    """A ``cpu=True`` task declaring a dependency is a ConfigError when the app starts."""
    queue.task(cpu=True)(cpu_with_dependency)
    with pytest.raises(ConfigError, match="cpu=True"):
        async with queue.lifespan()(FastAPI()):
            pass
