"""The app of the observability tests' CLI workers: ``integration.apps.obs_app:queue``.

Its store is ``$CONVEYOR_URL``. The queue has a lifespan that appends ``lifespan-start <pid>`` and
``lifespan-stop <pid>`` to ``$ITEST_LOG`` and yields ``{"pid": <its process id>, "cpu": <in a cpu
process>}``; it raises when ``$OBS_FAIL_STARTUP`` is set, and in cpu processes when
``$OBS_FAIL_CPU_STARTUP`` is. With ``$OBS_SPANS`` set, an OpenTelemetry middleware traces every
attempt through the SDK and appends each finished span to that file as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from conveyor import Context, Queue, Retry, Settings
from conveyor.middleware import Middleware
from conveyor.worker import in_cpu_process

log = logging.getLogger("obs.task")

SETTINGS = Settings(lease=5.0, recover_interval=0.5, grace=5.0, cancel_poll=0.05)


def append(path: str, line: str) -> None:
    """Append one line to ``path`` in a single write (lines of many processes never mix)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@asynccontextmanager
async def lifespan(queue: Queue) -> AsyncIterator[dict[str, Any]]:
    """Note the start and the stop of this process's lifespan; fail if asked to."""
    if os.environ.get("OBS_FAIL_STARTUP"):
        raise RuntimeError("the database is unreachable")
    if os.environ.get("OBS_FAIL_CPU_STARTUP") and in_cpu_process():
        raise RuntimeError("the model file is missing")
    append(os.environ["ITEST_LOG"], f"lifespan-start {os.getpid()}")
    yield {"pid": os.getpid(), "cpu": in_cpu_process()}
    append(os.environ["ITEST_LOG"], f"lifespan-stop {os.getpid()}")


def file_tracing() -> list[Middleware]:
    """An OpenTelemetry middleware exporting to ``$OBS_SPANS`` (JSON lines), if it is set."""
    path = os.environ.get("OBS_SPANS")
    if not path:
        return []
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from conveyor.otel import OpenTelemetryMiddleware

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            for span in spans:
                assert span.context is not None
                append(path, json.dumps({
                    "name": span.name, "kind": span.kind.name, "pid": os.getpid(),
                    "trace_id": f"{span.context.trace_id:032x}",
                    "span_id": f"{span.context.span_id:016x}",
                    "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "attributes": dict(span.attributes or {}),
                }, default=list))
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    return [OpenTelemetryMiddleware(provider)]


def build(url: str | None = None, middleware: Sequence[Middleware] = ()) -> Queue:
    """The app's queue on ``url`` (default ``$CONVEYOR_URL``) with its tasks registered."""
    q = Queue(url, settings=SETTINGS, lifespan=lifespan, middleware=middleware)

    @q.task(name="where")
    async def where(ctx: Context) -> dict[str, Any]:
        """Where it ran, the lifespan state it saw, and its meta."""
        return {"pid": os.getpid(), "state_pid": ctx.state["pid"], "cpu": ctx.state["cpu"],
                "meta": dict(ctx.meta)}

    @q.task(name="where_def")
    def where_def(ctx: Context) -> dict[str, Any]:
        """The same from a thread."""
        return {"pid": os.getpid(), "state_pid": ctx.state["pid"], "cpu": ctx.state["cpu"],
                "meta": dict(ctx.meta)}

    q.task(name="where_cpu", cpu=True)(where_cpu)
    q.task(name="chatty_cpu", cpu=True)(chatty_cpu)

    @q.task(name="chatty")
    async def chatty(ctx: Context) -> str:
        """Log a line of its own."""
        log.warning("hello from chatty")
        return ctx.job_id

    @q.task(name="pause")
    async def pause(seconds: float) -> int:
        """Take ``seconds``; return the process id."""
        await asyncio.sleep(seconds)
        return os.getpid()

    @q.task(name="flaky", retries=Retry(attempts=3, backoff=0.01))
    async def flaky(ctx: Context) -> int:
        """Fail the first attempt, succeed the next."""
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        return ctx.attempt

    @q.task(name="doomed", retries=Retry(attempts=2, backoff=0.01))
    async def doomed() -> None:
        """Never work: dead after two attempts."""
        raise ValueError("this never works")

    return q


def where_cpu(ctx: Context) -> dict[str, Any]:
    """Where a cpu=True task ran, and the lifespan state of its process."""
    return {"pid": os.getpid(), "state_pid": ctx.state["pid"], "cpu": ctx.state["cpu"],
                "meta": dict(ctx.meta)}


def chatty_cpu(ctx: Context) -> int:
    """Log a line from a cpu process."""
    log.warning("hello from chatty_cpu")
    return os.getpid()


queue = build(middleware=file_tracing())
