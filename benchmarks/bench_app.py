"""The tasks the benchmarks run, on a queue a worker process can load.

The worker is started as ``python -m conveyor worker benchmarks.bench_app:queue`` with
``CONVEYOR_URL`` set to the store under test; the runner builds its own handle on the same store
with :func:`make_queue`. Task names are fixed so both sides agree whatever the module is called.

``benchmarks.bench_observed:queue`` is the same queue with the OpenTelemetry and Prometheus
middlewares on: spans are recorded by the SDK and handed to a batch processor whose exporter drops
them (what is measured is conveyor's cost, not an exporter's network), metrics go to
prometheus_client's registry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from conveyor import Queue
from conveyor.middleware import Middleware


def observability() -> list[Middleware]:
    """OpenTelemetry (SDK, batch processor, an exporter that drops) and Prometheus middlewares."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from conveyor.otel import OpenTelemetryMiddleware
    from conveyor.prometheus import PrometheusMiddleware

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    # a queue deep enough that no span of a drain is dropped for want of room
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 20))
    return [OpenTelemetryMiddleware(provider), PrometheusMiddleware()]


def make_queue(url: str | None = None, *, observed: bool = False) -> Queue:
    """A queue on ``url`` (``$CONVEYOR_URL`` when None) with the benchmark tasks registered;
    ``observed``: with the OpenTelemetry and Prometheus middlewares."""
    q = Queue(url, middleware=observability() if observed else ())

    @q.task(name="noop")
    async def noop() -> None:
        """Do nothing: what is measured is the queue's own cost per job."""

    @q.task(name="started_at")
    async def started_at(enqueued_at: float) -> float:
        """Return when this attempt started (time.time()); ``enqueued_at`` rides along for the record."""
        return time.time()

    return q


queue = make_queue()
