"""OpenTelemetry tracing for conveyor (``pip install "conveyor[otel]"``: opentelemetry-api only).

```python
from conveyor import Queue
from conveyor.otel import OpenTelemetryMiddleware

queue = Queue(middleware=[OpenTelemetryMiddleware()])   # the global tracer provider, or pass one
```

Spans follow OpenTelemetry's messaging semantic conventions:

* ``send {queue}`` (PRODUCER) around each enqueue. A batch (``enqueue_many``) also gets one
  ``create {queue}`` span (PRODUCER) per job, children of the ``send`` span.
* The job carries the trace context of its creation (the ``send`` span of a single job, else its
  ``create`` span) in its ``meta``, through the global propagator (W3C ``traceparent`` and
  ``tracestate`` by default).
* ``process {queue}`` (CONSUMER) around each attempt, a child of that context: a request, the
  job it enqueued and each of the job's attempts (a retry is a second ``process`` span) share one
  trace, across processes and machines. The span is the current one while the task runs (in
  ``async def``, ``def`` and around ``cpu=True`` tasks), so the task's own spans and the jobs it
  enqueues nest under it.

Attributes: ``messaging.system`` = ``"conveyor"``, ``messaging.destination.name`` (the queue),
``messaging.operation.type`` and ``.name``, ``messaging.message.id`` (the job id),
``messaging.batch.message_count`` (a batch's ``send``), ``conveyor.task``, ``conveyor.key`` (when
the job has one), ``conveyor.attempt`` (``process``), ``conveyor.outcome`` (``succeeded``,
``retried``, ``failed``, ``cancelled``, ``released`` or ``lost``), ``conveyor.retry_at``; a failed
attempt has ``error.type``, an ERROR status and an ``exception`` event.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, TracerProvider

from conveyor import __version__
from conveyor.context import Context
from conveyor.middleware import EnqueueNext, InterruptReason, Middleware
from conveyor.model import ErrorInfo, JobRecord

__all__ = ["OpenTelemetryMiddleware"]

_SYSTEM = "conveyor"
_NO_PARENT = otel_context.Context()  # extract into this: a job without trace context starts a trace
_INTERRUPTED = {"cancel": "cancelled", "shutdown": "released", "lost": "lost"}


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _job_attributes(job: JobRecord, operation: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": _SYSTEM,
        "messaging.destination.name": job.queue,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.message.id": job.id,
        "conveyor.task": job.task,
    }
    if job.key is not None:
        attrs["conveyor.key"] = job.key
    return attrs


def _with_context(meta: Mapping[str, str]) -> dict[str, str]:
    """``meta`` plus the current trace context."""
    carrier = dict(meta)
    propagate.inject(carrier)
    return carrier


class OpenTelemetryMiddleware(Middleware):
    """Trace enqueues and attempts (see the module docs); ``tracer_provider`` defaults to the
    global one, read when the first span starts."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer_provider = tracer_provider
        self._tracer: Tracer | None = None
        self._live: dict[Context, tuple[Span, object]] = {}

    def __repr__(self) -> str:
        return "<OpenTelemetryMiddleware>"

    @property
    def tracer(self) -> Tracer:
        """conveyor's tracer from the provider."""
        if self._tracer is None:
            self._tracer = trace.get_tracer("conveyor", __version__, self.tracer_provider)
        return self._tracer

    # -- producer --------------------------------------------------------------------------
    async def enqueue(self, jobs: list[JobRecord], call_next: EnqueueNext) -> list[JobRecord]:
        """A ``send`` span around storing the batch; each job carries its creation's context."""
        tracer = self.tracer
        queue = jobs[0].queue
        if len(jobs) == 1:
            attrs = _job_attributes(jobs[0], "send")
        else:
            attrs = {
                "messaging.system": _SYSTEM, "messaging.destination.name": queue,
                "messaging.operation.type": "send", "messaging.operation.name": "send",
                "messaging.batch.message_count": len(jobs),
            }
        with tracer.start_as_current_span(
            f"send {queue}", kind=SpanKind.PRODUCER, attributes=attrs, record_exception=True,
        ) as span:
            if len(jobs) == 1:
                jobs[0].meta = _with_context(jobs[0].meta)
            else:
                for job in jobs:
                    with tracer.start_as_current_span(
                        f"create {job.queue}", kind=SpanKind.PRODUCER,
                        attributes=_job_attributes(job, "create"),
                    ):
                        job.meta = _with_context(job.meta)
            try:
                return await call_next(jobs)
            except Exception as exc:
                span.set_attribute("error.type", _type_name(exc))
                raise

    # -- attempts --------------------------------------------------------------------------
    def before_attempt(self, job: JobRecord, ctx: Context) -> None:
        # the producer's context, or a new trace (never the worker's own current context)
        parent = propagate.extract(job.meta, context=_NO_PARENT)
        attrs = _job_attributes(job, "process")
        attrs["conveyor.attempt"] = job.attempts
        span = self.tracer.start_span(
            f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attrs,
        )
        # current while the task runs: its own spans, and jobs it enqueues, nest under this one
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._live[ctx] = (span, token)

    def _end(self, ctx: Context) -> Span | None:
        found = self._live.pop(ctx, None)
        if found is None:
            return None
        span, token = found
        otel_context.detach(token)  # type: ignore[arg-type]
        return span

    def after_success(self, job: JobRecord, ctx: Context, result: Any) -> None:
        span = self._end(ctx)
        if span is not None:
            span.set_attribute("conveyor.outcome", "succeeded")
            span.end()

    def after_failure(
        self, job: JobRecord, ctx: Context, error: ErrorInfo, retry_at: datetime | None
    ) -> None:
        span = self._end(ctx)
        if span is None:
            return
        span.set_attribute("error.type", error["type"])
        span.set_attribute("conveyor.outcome", "retried" if retry_at is not None else "failed")
        if retry_at is not None:
            span.set_attribute("conveyor.retry_at", retry_at.isoformat())
        span.add_event("exception", {
            "exception.type": error["type"], "exception.message": error["message"],
            "exception.stacktrace": error["traceback"],
        })
        span.set_status(StatusCode.ERROR, f"{error['type']}: {error['message']}"[:1000])
        span.end()

    def after_interrupt(self, job: JobRecord, ctx: Context, reason: InterruptReason) -> None:
        span = self._end(ctx)
        if span is None:
            return
        span.set_attribute("conveyor.outcome", _INTERRUPTED[reason])
        if reason != "shutdown":  # put back at shutdown is no error: the job runs again
            span.set_attribute("error.type", _INTERRUPTED[reason])
            span.set_status(StatusCode.ERROR, f"the attempt was {_INTERRUPTED[reason]}")
        span.end()
