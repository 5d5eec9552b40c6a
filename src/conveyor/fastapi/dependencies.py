"""FastAPI ``Depends(...)`` in tasks, resolved by FastAPI's own machinery once per job attempt.

A task declares dependencies exactly as an endpoint does (``db: Annotated[Session, Depends(get_db)]``
or ``db = Depends(get_db)``). Registering such a task gives it :class:`DependsMiddleware`, the
innermost middleware of its attempts (the worker itself knows nothing of FastAPI), which calls
:func:`resolve` before each attempt: FastAPI's
``solve_dependencies`` runs the dependency graph against a synthetic request (sub-dependencies,
``async``/sync/generator dependencies, per-attempt caching, overrides), and every generator
dependency is closed on the attempt's exit stack once the attempt ends, so each attempt gets a fresh
session and sees its own exception in the dependency's ``except``/``finally``.

A dependency that needs the running job declares ``ctx: JobContext``; ``request.state`` holds
what the worker's lifespan yielded (and the app's lifespan state, for a worker run by the app), as
it holds the app's state in an endpoint.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant, solve_dependencies
from fastapi.exceptions import FastAPIError

from conveyor.context import Context
from conveyor.errors import ConfigError
from conveyor.middleware import CallNext, Middleware
from conveyor.model import JobRecord

if TYPE_CHECKING:
    from conveyor.queue import Queue
    from conveyor.task import Task

__all__ = ["DependsMiddleware", "JobContext", "check", "job_context", "resolve"]

#: where the synthetic request of a job attempt carries the attempt's Context
_CONTEXT_KEY = "conveyor.context"


def job_context(request: Request) -> Context:
    """The running job's :class:`~conveyor.Context`, for dependencies (use ``JobContext``)."""
    ctx = request.scope.get(_CONTEXT_KEY)
    if not isinstance(ctx, Context):
        raise RuntimeError(
            "JobContext is only available while a conveyor job runs, not in an HTTP request"
        )
    return ctx


#: annotate a dependency's parameter with this to receive the running job's Context
JobContext = Annotated[Context, Depends(job_context)]

# one dependency graph per task, built on first use; weak so tasks of dropped queues can go
_graphs: weakref.WeakKeyDictionary[Task[Any, Any], Dependant] = weakref.WeakKeyDictionary()


def _graph(task: Task[Any, Any]) -> Dependant:
    """The task's dependency parameters as a FastAPI ``Dependant`` (cached per task)."""
    found = _graphs.get(task)
    if found is not None:
        return found
    if task.cpu:
        raise ConfigError(
            f"task {task.name!r}: a cpu=True task runs in another process and cannot have FastAPI "
            "dependencies; resolve them in an async task and pass plain data to the cpu one"
        )
    declared = inspect.signature(task.fn).parameters
    params = [
        declared[name].replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name in task.signature.dependency_params
    ]

    def call(**values: Any) -> dict[str, Any]:
        return values

    # FastAPI reads this signature, and evaluates string annotations in the globals of
    # `__wrapped__`: the task's own module, as for an endpoint defined there
    setattr(call, "__signature__", inspect.Signature(params))  # noqa: B010
    setattr(call, "__wrapped__", task.fn)  # noqa: B010
    try:
        graph = get_dependant(path="", call=call)
    except (FastAPIError, TypeError, ValueError, NameError, AssertionError) as exc:
        raise ConfigError(
            f"task {task.name!r}: its FastAPI dependencies cannot be resolved: {exc}. "
            "A dependency that needs the running job should declare `ctx: JobContext` "
            "(from conveyor.fastapi)"
        ) from exc
    _graphs[task] = graph
    return graph


def check(queue: Queue) -> None:
    """Build the dependency graph of every task of ``queue`` now, so mistakes fail at startup."""
    for task in list(queue.tasks.values()):
        if task.signature.dependency_params:
            _graph(task)


class _Overrides:
    """What ``solve_dependencies`` asks for overrides: the app's, then the queue's on top."""

    __slots__ = ("dependency_overrides",)

    def __init__(self, queue: Queue) -> None:
        merged: dict[Callable[..., Any], Callable[..., Any]] = {}
        merged.update(getattr(queue.app, "dependency_overrides", None) or {})
        merged.update(queue.dependency_overrides)
        self.dependency_overrides = merged


def _request(task: Task[Any, Any], ctx: Context, stack: AsyncExitStack) -> Request:
    """A stand-in request for one attempt: no headers, no body, the app if there is one."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "conveyor",
        "path": f"/{task.queue.name}/{task.name}",
        "raw_path": f"/{task.queue.name}/{task.name}".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": None,
        "server": None,
        # `request.state` as in an endpoint: here the worker's lifespan state (a copy per attempt)
        "state": dict(ctx.state),
        _CONTEXT_KEY: ctx,
        # the exit stacks FastAPI enters generator dependencies on (names differ by version)
        "fastapi_astack": stack,
        "fastapi_inner_astack": stack,
        "fastapi_function_astack": stack,
    }
    if task.queue.app is not None:
        scope["app"] = task.queue.app
    return Request(scope)


async def resolve(task: Task[Any, Any], ctx: Context, stack: AsyncExitStack) -> dict[str, Any]:
    """Resolve the task's dependency parameters for one attempt; cleanups go on ``stack``.

    Returns the values by parameter name. Dependencies are cached within the attempt
    (``use_cache``), overridden by ``app.dependency_overrides`` and ``queue.dependency_overrides``.
    """
    graph = _graph(task)
    solved = await solve_dependencies(
        request=_request(task, ctx, stack),
        dependant=graph,
        dependency_overrides_provider=_Overrides(task.queue),
        dependency_cache={},
        async_exit_stack=stack,
        embed_body_fields=False,
    )
    if solved.errors:
        wanted = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', e)}" for e in solved.errors
        )
        raise ConfigError(
            f"task {task.name!r}: a dependency asks for request data a job does not have ({wanted}); "
            "a task's dependencies may use other dependencies, Request, and JobContext, "
            "but no query, header, cookie or body parameters"
        )
    return {name: solved.values[name] for name in task.signature.dependency_params}


class DependsMiddleware(Middleware):
    """Resolves ``task``'s ``Depends`` parameters around each of its attempts, and closes
    generator dependencies after it (they see the attempt's error, as after a request)."""

    def __init__(self, task: Task[Any, Any]) -> None:
        self.task = task

    def __repr__(self) -> str:
        return f"<DependsMiddleware {self.task.name!r}>"

    async def call(self, job: JobRecord, ctx: Context, call_next: CallNext) -> Any:
        """Resolve the dependencies, run the task with them, then close them."""
        async with AsyncExitStack() as stack:
            values = await resolve(self.task, ctx, stack)
            return await call_next(**values)
