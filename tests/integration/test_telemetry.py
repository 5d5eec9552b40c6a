"""The OpenTelemetry and Prometheus middlewares, in one process (the CLI tests cover several)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from conformance.helpers import RESULT_TIMEOUT, Gate  # tests/ is on sys.path
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until  # tests/ is on sys.path

from conveyor import Context, Queue, Retry
from conveyor.errors import JobCancelled, JobFailed
from conveyor.otel import OpenTelemetryMiddleware
from conveyor.prometheus import PrometheusMiddleware

from .fastapi_support import client_for


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans finished by the tracer provider of :func:`provider`."""
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """An SDK tracer provider exporting to memory, synchronously."""
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made


def named(spans: Any, name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_batch_gets_one_create_span_per_job_and_each_attempt_follows_its_own(
    provider: TracerProvider, exporter: InMemorySpanExporter,
) -> None:
    """enqueue_many: one send span (message count) with a create span per job; each job's process
    span is a child of its create span, with the messaging and conveyor attributes."""
    queue = Queue("memory://", name="batch", middleware=[OpenTelemetryMiddleware(provider)])

    @queue.task(name="noop", key="lane:{n}")
    async def noop(n: int) -> None: ...

    async with queue:
        jobs = await queue.enqueue_many([noop.prepare(n) for n in range(3)])
        async with queue.worker():
            for job in jobs:
                await job.result(timeout=RESULT_TIMEOUT)
    spans = exporter.get_finished_spans()
    (send,) = named(spans, "send batch")
    assert send.kind is trace.SpanKind.PRODUCER and send.attributes is not None
    assert send.attributes["messaging.batch.message_count"] == 3
    creates = {s.attributes["messaging.message.id"]: s for s in named(spans, "create batch")}  # type: ignore[index]
    assert set(creates) == {j.id for j in jobs}
    for job in jobs:
        create = creates[job.id]
        assert create.parent is not None and send.context is not None
        assert create.parent.span_id == send.context.span_id
        (process,) = [s for s in named(spans, "process batch")
                      if s.attributes and s.attributes["messaging.message.id"] == job.id]
        assert process.kind is trace.SpanKind.CONSUMER
        assert process.parent is not None and create.context is not None
        assert process.parent.span_id == create.context.span_id
        assert dict(process.attributes or {}) | {"conveyor.key": "?"} == {
            "messaging.system": "conveyor", "messaging.destination.name": "batch",
            "messaging.operation.type": "process", "messaging.operation.name": "process",
            "messaging.message.id": job.id, "conveyor.task": "noop", "conveyor.attempt": 1,
            "conveyor.key": "?", "conveyor.outcome": "succeeded",
        }


async def test_the_process_span_is_current_in_the_task_and_for_jobs_it_enqueues(
    provider: TracerProvider, exporter: InMemorySpanExporter,
) -> None:
    """Spans a task starts (async def and def) and the send span of a job it enqueues are
    children of its process span: one trace from the first job to the next."""
    queue = Queue("memory://", middleware=[OpenTelemetryMiddleware(provider)])
    tracer = provider.get_tracer("tests")

    @queue.task(name="child")
    def child() -> None:
        with tracer.start_as_current_span("work in a thread"):
            pass

    @queue.task(name="parent")
    async def parent() -> str:
        with tracer.start_as_current_span("work on the loop"):
            job = await child.enqueue()
        return job.id

    async with queue:
        first = await parent.enqueue()
        async with queue.worker():
            second = queue.job(await first.result(timeout=RESULT_TIMEOUT))
            await second.result(timeout=RESULT_TIMEOUT)
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans if s.context}) == 1
    by_job = {s.attributes["messaging.message.id"]: s  # type: ignore[index]
              for s in named(spans, "process default")}
    on_loop = named(spans, "work on the loop")[0]
    in_thread = named(spans, "work in a thread")[0]
    sends = {s.attributes["messaging.message.id"]: s for s in named(spans, "send default")}  # type: ignore[index]
    assert on_loop.parent and on_loop.parent.span_id == by_job[first.id].context.span_id  # type: ignore[union-attr]
    assert sends[second.id].parent.span_id == on_loop.context.span_id  # type: ignore[union-attr]
    assert in_thread.parent and in_thread.parent.span_id == by_job[second.id].context.span_id  # type: ignore[union-attr]


async def test_failures_and_cancels_are_marked_on_their_process_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter,
) -> None:
    """A failed last attempt has error.type, an ERROR status and an exception event; a cancelled
    one is marked cancelled."""
    queue = Queue("memory://", middleware=[OpenTelemetryMiddleware(provider)])
    gate = Gate()

    @queue.task(name="bad")
    async def bad() -> None:
        raise KeyError("missing")

    @queue.task(name="slow")
    async def slow() -> None:
        await gate.wait()

    async with queue:
        failing, stopped = await bad.enqueue(), await slow.enqueue()
        async with queue.worker(concurrency=2):
            with pytest.raises(JobFailed):
                await failing.result(timeout=RESULT_TIMEOUT)
            await wait_until(lambda: gate.entered >= 1, message="the job started")
            await stopped.cancel()
            with pytest.raises(JobCancelled):
                await stopped.result(timeout=RESULT_TIMEOUT)
    spans = {s.attributes["conveyor.task"]: s for s in named(exporter.get_finished_spans(),  # type: ignore[index]
                                                              "process default")}
    failed, cancelled = spans["bad"], spans["slow"]
    assert failed.attributes is not None and cancelled.attributes is not None
    assert failed.attributes["error.type"] == "KeyError"
    assert failed.attributes["conveyor.outcome"] == "failed"
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert cancelled.attributes["conveyor.outcome"] == "cancelled"
    assert cancelled.status.status_code is trace.StatusCode.ERROR


def scrape(text: str) -> dict[tuple[str, str], float]:
    """Samples summed by (name, the first label value among status/task)."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("status") or sample.labels.get("task") or "")
            out[key] = out.get(key, 0.0) + sample.value
    return out


async def test_the_router_serves_metrics_of_every_outcome() -> None:
    """GET /jobs/metrics (router metrics=True) in Prometheus text: enqueued, started and each
    outcome by task, run time and pickup histograms, in-flight and the status counts read now."""
    registry = CollectorRegistry()
    queue = Queue("memory://", middleware=[PrometheusMiddleware(registry)])
    gate = Gate()

    @queue.task(name="ok")
    async def ok() -> None: ...

    @queue.task(name="flaky", retries=Retry(attempts=2, backoff=0.0))
    async def flaky(ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("once")

    @queue.task(name="doomed", retries=Retry(attempts=2, backoff=0.0))
    async def doomed() -> None:
        raise RuntimeError("always")

    @queue.task(name="slow")
    async def slow() -> None:
        await gate.wait()

    app = FastAPI(lifespan=queue.lifespan(worker=True))
    app.include_router(queue.router(metrics=True, public=True), prefix="/jobs")
    async with client_for(app) as client:
        for task in (ok, ok, flaky, doomed):
            await task.enqueue()
        running = await slow.enqueue()
        cancelled = await slow.enqueue()
        await cancelled.cancel()  # before it ran: not an attempt
        await wait_until(lambda: gate.entered >= 1, message="the job started")
        for job in await queue.list_jobs(limit=10):
            if job.task != "slow":
                with pytest.raises(JobFailed) if job.task == "doomed" else contextlib.nullcontext():
                    await queue.job(job.id).result(timeout=RESULT_TIMEOUT)
        reply = await client.get("/jobs/metrics")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        got = scrape(reply.text)
        await running.cancel()
        with pytest.raises(JobCancelled):
            await running.result(timeout=RESULT_TIMEOUT)
        after = scrape((await client.get("/jobs/metrics")).text)
    assert got[("conveyor_jobs_enqueued_total", "ok")] == 2
    assert got[("conveyor_jobs_enqueued_total", "slow")] == 2
    assert got[("conveyor_jobs_started_total", "ok")] == 2
    assert got[("conveyor_jobs_succeeded_total", "flaky")] == 1
    assert got[("conveyor_jobs_failed_total", "flaky")] == 1
    assert got[("conveyor_jobs_retried_total", "flaky")] == 1
    assert got[("conveyor_jobs_failed_total", "doomed")] == 2
    assert got[("conveyor_jobs_dead_total", "doomed")] == 1
    assert got[("conveyor_job_duration_seconds_count", "doomed")] == 2
    assert got[("conveyor_job_pickup_seconds_count", "ok")] == 2
    assert got[("conveyor_jobs_in_flight", "slow")] == 1
    assert got[("conveyor_jobs", "succeeded")] == 3 and got[("conveyor_jobs", "running")] == 1
    assert got[("conveyor_jobs", "cancelled")] == 1 and got[("conveyor_jobs", "dead")] == 1
    assert after[("conveyor_jobs_cancelled_total", "slow")] == 1
    assert after[("conveyor_jobs_in_flight", "slow")] == 0
    assert after[("conveyor_jobs", "cancelled")] == 2
