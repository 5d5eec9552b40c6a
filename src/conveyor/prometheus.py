"""Prometheus metrics for conveyor (``pip install "conveyor[prometheus]"``).

```python
from conveyor import Queue
from conveyor.prometheus import PrometheusMiddleware

queue = Queue(middleware=[PrometheusMiddleware()])
```

Served by ``conveyor worker ... --metrics-port 9100`` (which adds the middleware when the queue
has none) and by the router: ``queue.router(metrics=True)`` serves ``GET /jobs/metrics``.

* ``conveyor_jobs_enqueued_total`` (counter; queue, task): jobs stored by enqueue
* ``conveyor_jobs_started_total``, ``_succeeded_total``, ``_failed_total`` (attempts that raised or
  timed out, retried ones included), ``_retried_total``, ``_dead_total``, ``_cancelled_total``
  (counters; queue, task): attempts and how they ended
* ``conveyor_job_duration_seconds`` (histogram; queue, task): run time of the attempts that
  succeeded or failed
* ``conveyor_job_pickup_seconds`` (histogram; queue, task): from when a job was due (enqueued,
  delayed or retry time) to the start of its attempt
* ``conveyor_jobs`` (gauge; queue, status): jobs in each status, from the backend's counts
* ``conveyor_jobs_in_flight`` (gauge; queue, task): attempts running now
* ``conveyor_event_loop_lag_seconds`` (gauge): the worker's event-loop lag, the most seen over the
  last second; ``conveyor_event_loop_stalls_total`` (counter): stalls past ``loop_lag_warning``

**Several processes.** With ``--processes N`` the workers write their metrics through
prometheus_client's multiprocess mode into one directory (``$PROMETHEUS_MULTIPROC_DIR``, or a
temporary one the supervisor makes) and the supervisor serves the port: one scrape shows the sum
of all processes. Counters and histograms add up; ``conveyor_jobs_in_flight`` sums the live
processes, ``conveyor_jobs`` shows the latest reading and the loop lag the worst live process.
An app and its workers on one machine may share a directory too (set the variable for both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess

from conveyor.context import Context
from conveyor.middleware import EnqueueNext, InterruptReason, Middleware
from conveyor.model import ErrorInfo, JobRecord, JobStatus

if TYPE_CHECKING:
    from conveyor.queue import Queue
    from conveyor.worker import Worker

__all__ = [
    "CONTENT_TYPE",
    "PrometheusMiddleware",
    "exposition",
    "multiprocess",
    "refresh_stats",
    "serve",
]

log = logging.getLogger("conveyor.prometheus")

#: the content type of :func:`exposition`'s text
CONTENT_TYPE = CONTENT_TYPE_LATEST
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_TASK = ("queue", "task")
#: run time buckets, seconds: from a no-op job to a long batch
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                    300, 900, 3600)
#: pickup latency buckets, seconds: a warm worker picks up in milliseconds, a busy one later
PICKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                  300)


def multiprocess() -> bool:
    """True when metrics are written for several processes (``$PROMETHEUS_MULTIPROC_DIR`` set)."""
    return bool(os.environ.get(_MULTIPROC_ENV))


@dataclass(slots=True)
class _Metrics:
    enqueued: Counter
    started: Counter
    succeeded: Counter
    failed: Counter
    retried: Counter
    dead: Counter
    cancelled: Counter
    duration: Histogram
    pickup: Histogram
    jobs: Gauge
    in_flight: Gauge
    loop_lag: Gauge
    stalls: Counter


_made: dict[int, _Metrics] = {}


def _metrics(registry: CollectorRegistry) -> _Metrics:
    """The metrics in ``registry``, made on first use (once per registry, however many queues)."""
    found = _made.get(id(registry))
    if found is not None:
        return found

    def counter(name: str, doc: str) -> Counter:
        return Counter(f"conveyor_jobs_{name}", doc, _TASK, registry=registry)

    made = _made[id(registry)] = _Metrics(
        enqueued=counter("enqueued", "Jobs stored by enqueue."),
        started=counter("started", "Attempts started."),
        succeeded=counter("succeeded", "Attempts that returned."),
        failed=counter("failed", "Attempts that raised or timed out (retried ones included)."),
        retried=counter("retried", "Failed attempts whose job is tried again."),
        dead=counter("dead", "Jobs dead after their last attempt failed."),
        cancelled=counter("cancelled", "Attempts cancelled while running."),
        duration=Histogram("conveyor_job_duration_seconds", "Run time of attempts that succeeded "
                           "or failed.", _TASK, buckets=DURATION_BUCKETS, registry=registry),
        pickup=Histogram("conveyor_job_pickup_seconds", "From when a job was due to when an "
                         "attempt started.", _TASK, buckets=PICKUP_BUCKETS, registry=registry),
        jobs=Gauge("conveyor_jobs", "Jobs in each status, from the backend.", ("queue", "status"),
                   registry=registry, multiprocess_mode="mostrecent"),
        in_flight=Gauge("conveyor_jobs_in_flight", "Attempts running now.", _TASK,
                        registry=registry, multiprocess_mode="livesum"),
        loop_lag=Gauge("conveyor_event_loop_lag_seconds", "The worker's event-loop lag: the most "
                       "seen over the last sampling period.", registry=registry,
                       multiprocess_mode="livemax"),
        stalls=Counter("conveyor_event_loop_stalls", "Event-loop stalls past loop_lag_warning.",
                       registry=registry),
    )
    return made


@dataclass(slots=True)
class _TaskSeries:
    """The labelled series of one (queue, task): looked up once, not per job."""

    started: Any
    succeeded: Any
    failed: Any
    retried: Any
    dead: Any
    cancelled: Any
    duration: Any
    pickup: Any
    in_flight: Any


class PrometheusMiddleware(Middleware):
    """Counts jobs and times attempts; a worker using it also samples its queues' stats every
    ``stats_interval`` seconds and its event-loop lag every ``lag_interval`` seconds.

    ``registry``: where the metrics go (default: prometheus_client's global one). Metrics are
    made on first use, once per registry.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, stats_interval: float = 5.0,
        lag_interval: float = 1.0,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.stats_interval = stats_interval
        self.lag_interval = lag_interval
        self._m: _Metrics | None = None
        self._series: dict[tuple[str, str], _TaskSeries] = {}
        self._started: dict[Context, float] = {}
        self._samplers: dict[int, asyncio.Task[None]] = {}

    def __repr__(self) -> str:
        return "<PrometheusMiddleware>"

    @property
    def metrics(self) -> _Metrics:
        """The metric objects (made on first use)."""
        if self._m is None:
            self._m = _metrics(self.registry)
        return self._m

    def _of(self, job: JobRecord) -> _TaskSeries:
        key = (job.queue, job.task)
        found = self._series.get(key)
        if found is None:
            m = self.metrics
            found = self._series[key] = _TaskSeries(*(
                metric.labels(*key) for metric in (
                    m.started, m.succeeded, m.failed, m.retried, m.dead, m.cancelled, m.duration,
                    m.pickup, m.in_flight,
                )
            ))
        return found

    # -- producer --------------------------------------------------------------------------
    async def enqueue(self, jobs: list[JobRecord], call_next: EnqueueNext) -> list[JobRecord]:
        """Count the jobs stored (not those a ``unique`` job already stands for)."""
        stored = await call_next(jobs)
        enqueued = self.metrics.enqueued
        for sent, got in zip(jobs, stored, strict=False):
            if sent.id == got.id:
                enqueued.labels(sent.queue, sent.task).inc()
        return stored

    # -- attempts --------------------------------------------------------------------------
    def before_attempt(self, job: JobRecord, ctx: Context) -> None:
        series = self._of(job)
        series.started.inc()
        series.in_flight.inc()
        due = job.scheduled_for or job.enqueued_at
        if job.started_at is not None:
            series.pickup.observe(max(0.0, (job.started_at - due).total_seconds()))
        self._started[ctx] = time.perf_counter()

    def _ended(self, ctx: Context, series: _TaskSeries, timed: bool) -> None:
        began = self._started.pop(ctx, None)
        series.in_flight.dec()
        if timed and began is not None:
            series.duration.observe(time.perf_counter() - began)

    def after_success(self, job: JobRecord, ctx: Context, result: Any) -> None:
        series = self._of(job)
        series.succeeded.inc()
        self._ended(ctx, series, True)

    def after_failure(
        self, job: JobRecord, ctx: Context, error: ErrorInfo, retry_at: datetime | None
    ) -> None:
        series = self._of(job)
        series.failed.inc()
        if retry_at is not None:
            series.retried.inc()
        self._ended(ctx, series, True)

    def on_dead(self, job: JobRecord, ctx: Context, error: ErrorInfo) -> None:
        self._of(job).dead.inc()

    def after_interrupt(self, job: JobRecord, ctx: Context, reason: InterruptReason) -> None:
        series = self._of(job)
        if reason == "cancel":
            series.cancelled.inc()
        self._ended(ctx, series, False)

    # -- the worker's samplers -------------------------------------------------------------
    async def startup(self, worker: Worker) -> None:
        """Start sampling the worker's queue stats and loop lag."""
        self._samplers[id(worker)] = asyncio.create_task(self._sample(worker))

    async def shutdown(self, worker: Worker) -> None:
        """Stop sampling."""
        sampler = self._samplers.pop(id(worker), None)
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _sample(self, worker: Worker) -> None:
        m = self.metrics
        stalls_seen = 0
        next_stats = 0.0
        loop = asyncio.get_running_loop()
        while True:
            m.loop_lag.set(worker.loop_lag())
            stalls = len(worker.stalls)
            if stalls > stalls_seen:
                m.stalls.inc(stalls - stalls_seen)
                stalls_seen = stalls
            if loop.time() >= next_stats:
                next_stats = loop.time() + self.stats_interval
                try:
                    await refresh_stats(worker.queue, worker.queues, self.registry)
                except Exception:
                    log.warning("reading the queues' stats for metrics failed", exc_info=True)
            await asyncio.sleep(self.lag_interval)


async def refresh_stats(
    queue: Queue, queues: Sequence[str] | None = None, registry: CollectorRegistry | None = None
) -> None:
    """Set ``conveyor_jobs`` from the backend's counts of ``queues`` (default: ``queue``'s own)."""
    jobs = _metrics(registry if registry is not None else REGISTRY).jobs
    backend = await queue._backend()
    for name in queues or [queue.name]:
        counts = await backend.stats(name)
        for status in JobStatus:
            jobs.labels(name, status.value).set(counts.get(status.value, 0))


def _exposed(registry: CollectorRegistry | None) -> CollectorRegistry:
    if multiprocess():
        merged = CollectorRegistry()
        _multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged
    return registry if registry is not None else REGISTRY


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """The metrics as Prometheus text: every process's together in multiprocess mode."""
    return generate_latest(_exposed(registry))


def serve(port: int, host: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> int:
    """Serve the metrics over HTTP from a background thread; return the port (``0`` picks one)."""
    server, _ = start_http_server(port, host, registry=_exposed(registry))
    return int(server.server_port)


def mark_process_dead(pid: int) -> None:
    """Forget a dead process's live gauges (multiprocess mode; the supervisor calls it)."""
    if multiprocess():
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
