"""Queue: the task registry, its backend and settings, and the way into everything else."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from conveyor.backends import open_backend
from conveyor.backends.base import Backend, JobFilter
from conveyor.context import Context
from conveyor.errors import ConfigError, OptionError, UnknownTask
from conveyor.job import Job
from conveyor.middleware import EnqueueNext, Middleware, overrides
from conveyor.model import JobRecord, JobStatus
from conveyor.retry import Retry, seconds
from conveyor.serde import check_meta, check_name
from conveyor.settings import Settings, url_from_env
from conveyor.task import Prepared, Task, check_optional, check_priority

if TYPE_CHECKING:
    from conveyor.fastapi.lifespan import AppLifespan, QueueLifespan
    from conveyor.fastapi.router import APIRouter
    from conveyor.worker import Worker

__all__ = ["Queue", "WorkerLifespan"]

P = ParamSpec("P")
R = TypeVar("R")

#: a worker's lifespan, the shape of FastAPI's: ``queue -> async context manager`` that may
#: yield a mapping of state (``ctx.state`` in tasks, ``request.state`` in their dependencies)
WorkerLifespan = Callable[["Queue"], contextlib.AbstractAsyncContextManager[Mapping[str, Any] | None]]


class _Decorator(Protocol):
    @overload
    def __call__(self, fn: Callable[Concatenate[Context, P], Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Context, P], R]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


class Queue:
    """A named queue on a backend, with its tasks.

    ``url`` picks the engine: ``memory://``, ``sqlite:///path.db`` (the default, from
    ``$CONVEYOR_URL`` when set), ``redis://...``, ``postgresql://...``. Nothing connects until the
    queue is first used or opened (``async with queue:``).

    ``lifespan`` runs once in each worker (and in each of its ``cpu=True`` processes) when it
    starts and when it stops, like FastAPI's: ``lifespan(queue)`` is an async context manager
    whose yielded mapping tasks read as ``ctx.state``. ``middleware`` hooks into every enqueue
    and every attempt (:mod:`conveyor.middleware`). See docs/observability.md.
    """

    def __init__(
        self, url: str | None = None, *, name: str = "default", settings: Settings | None = None,
        lifespan: WorkerLifespan | None = None, middleware: Sequence[Middleware] = (),
    ) -> None:
        check_name(name, "queue")
        if settings is not None and not isinstance(settings, Settings):
            raise OptionError(f"settings= takes a conveyor Settings, got {type(settings).__name__}")
        if url is not None and not isinstance(url, str):
            raise ConfigError(f"the backend URL must be a str, got {type(url).__name__}")
        self.url = url or url_from_env()
        self.name = name
        self.settings = settings or Settings()
        if lifespan is not None and not callable(lifespan):
            raise OptionError(
                f"lifespan= takes a function (queue -> async context manager), got {lifespan!r}"
            )
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: what each worker runs at start and stop (``lifespan=``), or None
        self.worker_lifespan = lifespan
        self.middleware: tuple[Middleware, ...] = ()
        self._enqueue_chain: EnqueueNext | None = None
        for mw in middleware:
            self.add_middleware(mw)
        self.backend: Backend = open_backend(self.url)
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        #: replacements for tasks' FastAPI dependencies (``{get_db: fake_db}``); they win over the app's
        self.dependency_overrides: dict[Callable[..., Any], Callable[..., Any]] = {}
        #: the ASGI app this queue serves, set by ``lifespan()``: tasks' dependencies see it as
        #: ``request.app`` and follow its ``dependency_overrides``
        self.app: Any = None

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} {self.backend.safe_url}>"

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware, innermost so far (workers started from now on use it)."""
        if not isinstance(middleware, Middleware):
            raise OptionError(
                f"middleware must be conveyor.middleware.Middleware instances, got {middleware!r}"
            )
        self.middleware = (*self.middleware, middleware)
        wrapping = [mw for mw in self.middleware if overrides(mw, "enqueue")]
        call: EnqueueNext | None = None
        if wrapping:
            call = self._store
            for mw in reversed(wrapping):
                call = functools.partial(mw.enqueue, call_next=call)
        self._enqueue_chain = call

    async def _store(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """The innermost step of enqueue with middlewares: check what they did to meta, store."""
        for job in jobs:
            if job.meta:
                job.meta = check_meta(job.meta)
        return await (await self._backend()).enqueue(jobs)

    # -- registry --------------------------------------------------------------------------
    # A leading `ctx: Context` is injected, so the overloads drop it from what enqueue accepts.
    @overload
    def task(self, fn: Callable[Concatenate[Context, P], Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[Concatenate[Context, P], R], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, retries: Retry | int | None = None,
        timeout: float | timedelta | None = None, cpu: bool = False, key: str | None = None,
        priority: int = 0, supersede: bool = False,
    ) -> _Decorator: ...

    def task(
        self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
        retries: Retry | int | None = None, timeout: float | timedelta | None = None,
        cpu: bool = False, key: str | None = None, priority: int = 0, supersede: bool = False,
    ) -> Any:
        """Register a function as a task: ``@queue.task`` or ``@queue.task(retries=..., ...)``.

        ``async def`` runs on the worker's event loop, ``def`` in a thread pool, and ``cpu=True``
        (a module-level ``def``) in a process pool. ``key`` is a literal or a template over the
        arguments (``"match:{match_id}"``): jobs with the same key run one at a time, in order.
        """
        if retries is not None and not isinstance(retries, Retry | int):
            raise OptionError(f"retries= takes a Retry or an int, got {type(retries).__name__}")
        policy = Retry.of(retries)
        limit = seconds(timeout, "timeout", positive=True)
        check_priority(priority)
        check_optional(key, str, "key")
        check_optional(name, str, "name")
        for flag, value in (("cpu", cpu), ("supersede", supersede)):
            if not isinstance(value, bool):
                raise OptionError(f"{flag}= must be a bool, got {type(value).__name__} {value!r}")

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = check_name(name if name is not None else getattr(f, "__qualname__", None), "task")
            if task_name in self.tasks:
                raise ConfigError(
                    f"a task named {task_name!r} is already registered on queue {self.name!r}; "
                    "pass name= to tell them apart"
                )
            task: Task[Any, Any] = Task(
                self, f, name=task_name, retries=policy, timeout=limit, cpu=cpu, key=key,
                priority=priority, supersede=supersede,
            )
            if task.signature.dependency_params:
                # FastAPI Depends() are resolved by a middleware of the FastAPI integration
                from conveyor.fastapi.dependencies import DependsMiddleware

                task.inner_middleware = (DependsMiddleware(task),)
            self.tasks[task_name] = task
            return task

        return register if fn is None else register(fn)

    def job(self, job_id: str) -> Job[Any]:
        """A handle on the job with this id (nothing is looked up yet)."""
        return Job(self, job_id)

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect the backend (and create its schema). Called for you on first use."""
        if self._opened:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self.backend.open()
                self._opened = True

    async def close(self) -> None:
        """Disconnect the backend."""
        if self._opened:
            self._opened = False
            await self.backend.close()

    async def __aenter__(self) -> Queue:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _backend(self) -> Backend:
        if not self._opened:
            await self.open()
        return self.backend

    # -- jobs ------------------------------------------------------------------------------
    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered under ``name``, or :class:`UnknownTask` naming close matches."""
        if not isinstance(name, str):
            raise UnknownTask(f"a task name is a str, got {type(name).__name__} {name!r}")
        task = self.tasks.get(name)
        if task is None:
            close = difflib.get_close_matches(name, list(self.tasks), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownTask(f"no task named {name!r} on queue {self.name!r}{hint}")
        return task

    async def enqueue(self, task: str, /, *args: Any, **kwargs: Any) -> Job[Any]:
        """Enqueue a registered task by name (prefer ``task.enqueue(...)``, which editors check)."""
        return await self.get_task(task).enqueue(*args, **kwargs)

    async def enqueue_many(
        self, prepared: Sequence[Prepared[Any]], *, connection: object | None = None
    ) -> list[Job[Any]]:
        """Store many validated jobs in one round trip (all or nothing); return their handles.

        Build each with ``task.prepare(...)`` or ``task.options(...).prepare(...)``. With
        ``connection=`` (a PostgreSQL queue only: a SQLAlchemy ``AsyncSession`` or
        ``AsyncConnection``, an asyncpg or a psycopg 3 connection, its transaction open) the jobs
        are written inside that transaction: they exist, and workers are woken, only if it commits.
        """
        for item in prepared:
            if item.task.queue is not self and self.tasks.get(item.task.name) is not item.task:
                raise UnknownTask(f"task {item.task.name!r} is not registered on queue {self.name!r}")
        if connection is not None:
            # refused before anything is written, even for an empty batch
            backend = await self._backend()
            stored = await backend.enqueue_in(connection, [p.record for p in prepared])
            return [Job(self, rec.id, p.task) for rec, p in zip(stored, prepared, strict=True)]
        if not prepared:
            return []
        records = [p.record for p in prepared]
        if self._enqueue_chain is not None:
            stored = await self._enqueue_chain(records)
        else:
            stored = await (await self._backend()).enqueue(records)
        return [Job(self, rec.id, p.task) for rec, p in zip(stored, prepared, strict=True)]

    async def list_jobs(
        self, *, status: JobStatus | str | None = None, task: str | None = None,
        limit: int = 50, offset: int = 0, all_queues: bool = False,
    ) -> list[JobRecord]:
        """Jobs of this queue, newest first."""
        for what, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OptionError(f"{what} must be an int >= 0, got {value!r}")
        try:
            wanted = JobStatus(status) if status is not None else None
        except ValueError:
            raise OptionError(
                f"status must be one of {', '.join(s.value for s in JobStatus)}, got {status!r}"
            ) from None
        check_optional(task, str, "task")
        backend = await self._backend()
        return await backend.list_jobs(JobFilter(
            queue=None if all_queues else self.name,
            status=wanted,
            task=task, limit=limit, offset=offset,
        ))

    async def stats(self) -> dict[str, int]:
        """How many jobs of this queue are in each status."""
        return await (await self._backend()).stats(self.name)

    # -- running ---------------------------------------------------------------------------
    def worker(
        self, *, concurrency: int = 10, queues: Sequence[str] | None = None,
        grace: float | None = None, lease: float | None = None, cpu_workers: int | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> Worker:
        """A worker for this queue's tasks: ``async with queue.worker(concurrency=10): ...``.

        ``queues`` lists the named queues it takes jobs from (default: this queue's name);
        ``cpu_workers`` sizes the process pool for ``cpu=True`` tasks (default: CPU count);
        ``state`` is state tasks see beside what the queue's lifespan yields (an app's state).
        """
        from conveyor.worker import Worker

        _check_worker_options(concurrency, queues, cpu_workers)
        grace = seconds(grace, "grace")
        lease = seconds(lease, "lease")
        return Worker(
            self, concurrency=concurrency, queues=list(queues or [self.name]), grace=grace,
            lease=lease, cpu_workers=cpu_workers, state=state,
        )

    # -- FastAPI (conveyor[fastapi]; imported only when asked for) ---------------------------
    def lifespan(
        self, *, worker: bool = False, concurrency: int = 10, queues: Sequence[str] | None = None,
        grace: float | None = None, cpu_workers: int | None = None,
        lifespan: AppLifespan | None = None,
    ) -> QueueLifespan:
        """A FastAPI lifespan: ``FastAPI(lifespan=queue.lifespan(worker=True, concurrency=10))``.

        Opens the backend on startup and closes it on shutdown; with ``worker=True`` it also runs
        a worker in the app's process and drains it gracefully (``grace`` seconds) on shutdown.
        ``lifespan=`` wraps the app's own lifespan, which starts first and stops last.
        """
        from conveyor.fastapi.lifespan import QueueLifespan

        if worker:  # checked now, not when the app starts
            _check_worker_options(concurrency, queues, cpu_workers)
            seconds(grace, "grace")
        return QueueLifespan(
            self, worker=worker, concurrency=concurrency, queues=queues, grace=grace,
            cpu_workers=cpu_workers, lifespan=lifespan,
        )

    def router(
        self, *, dashboard: bool = False, dependencies: Sequence[Any] | None = None,
        tags: list[str] | None = None, heartbeat: float = 15.0, public: bool = False,
        metrics: bool = False,
    ) -> APIRouter:
        """A FastAPI router over this queue's jobs: ``app.include_router(queue.router(), prefix="/jobs")``.

        REST (list, get, cancel, retry, stats), Server-Sent Events per job, and with
        ``dashboard=True`` an HTML dashboard at ``/ui``; only jobs of this queue are served.
        ``dependencies`` (e.g. ``[Depends(auth)]``) guard every route: jobs' arguments, results
        and tracebacks are private data. Without them a warning is logged, unless ``public=True``
        says the router is open on purpose. ``heartbeat`` is the seconds between keep-alive
        comments on event streams. Cancel and retry (POST) need the header ``X-Conveyor: 1``.
        ``metrics=True`` adds ``GET /metrics``, Prometheus text (``conveyor[prometheus]``).
        """
        from conveyor.fastapi.router import job_router

        return job_router(
            self, dashboard=dashboard, dependencies=dependencies, tags=tags, heartbeat=heartbeat,
            public=public, metrics=metrics,
        )


def _check_worker_options(
    concurrency: object, queues: Sequence[str] | None, cpu_workers: object
) -> None:
    """Raise :class:`OptionError` for worker options of the wrong type or out of range."""
    for what, value, high in (("concurrency", concurrency, 10_000), ("cpu_workers", cpu_workers, 1024)):
        if value is None and what == "cpu_workers":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise OptionError(f"{what} must be an int from 1 to {high:,}, got {value!r}")
    if queues is not None:
        if isinstance(queues, str) or not isinstance(queues, Sequence) or not queues:
            raise OptionError(f"queues= takes a non-empty list of queue names, got {queues!r}")
        for name in queues:
            try:
                check_name(name, "queue")
            except ConfigError as exc:
                raise OptionError(exc.message) from None
