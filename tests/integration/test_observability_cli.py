"""Lifespan, logs, metrics and traces of real ``conveyor worker`` processes (app: ``obs_app``)."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Queue
from conveyor.errors import JobFailed
from conveyor.otel import OpenTelemetryMiddleware

from .apps import obs_app
from .fastapi_support import client_for
from .procs import Workers, all_jobs, statuses, until

APP = "integration.apps.obs_app:queue"

pytestmark = pytest.mark.timeout(90)


def lines(path: Path, event: str) -> list[int]:
    """The pids of the ``event <pid>`` lines the app's lifespan wrote."""
    if not path.exists():
        return []
    return [int(line.split()[1]) for line in path.read_text().splitlines() if line.startswith(event)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_every_worker_process_and_cpu_process_runs_the_lifespan_once(
    workers: Workers, db_url: str, task_log: Path,
) -> None:
    """With --processes 2 each worker process, and each cpu process, enters the lifespan once at
    start, its tasks see that process's state, and each leaves it once at SIGTERM; task logs are
    JSON lines with the job's fields, a cpu task's too."""
    proc = workers.start("--processes", "2", "--concurrency", "4", "--log-format", "json", app=APP)
    async with obs_app.build(db_url) as queue:
        jobs = [await queue.tasks[name].options(meta={"tenant": "t1"}).enqueue()
                for name in ["where"] * 6 + ["where_def"] * 6 + ["where_cpu"] * 2]
        chatty = await queue.tasks["chatty"].enqueue()
        chatty_cpu = await queue.tasks["chatty_cpu"].enqueue()
        results = [await job.result(timeout=30) for job in jobs]
        await chatty.result(timeout=30)
        cpu_pid = await chatty_cpu.result(timeout=30)
    for got in results:
        assert got["state_pid"] == got["pid"] and got["meta"] == {"tenant": "t1"}
    assert [got["cpu"] for got in results] == [False] * 12 + [True] * 2
    cpu_pids = {r["pid"] for r in results[-2:]}
    worker_pids = {r["pid"] for r in results[:-2]}
    starts = lines(task_log, "lifespan-start")
    assert all(n == 1 for n in Counter(starts).values()), starts
    assert worker_pids <= set(starts) and cpu_pids <= set(starts) and not worker_pids & cpu_pids
    assert len(set(starts) - cpu_pids - {cpu_pid}) == 2  # the two worker processes

    records = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    said = {r["message"]: r for r in records if r["message"].startswith("hello from")}
    assert said["hello from chatty"] | {"time": 0, "process": 0} == {
        "time": 0, "level": "WARNING", "logger": "obs.task", "message": "hello from chatty",
        "process": 0, "job_id": chatty.id, "task": "chatty", "queue": "default", "attempt": 1,
    }
    cpu_said = said["hello from chatty_cpu"]
    assert (cpu_said["job_id"], cpu_said["task"], cpu_said["process"]) == (
        chatty_cpu.id, "chatty_cpu", cpu_pid,
    )

    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(30) == 0
    assert sorted(lines(task_log, "lifespan-stop")) == sorted(starts)


async def test_a_failing_start_up_stops_every_process_with_a_clear_error(
    workers: Workers, db_url: str,
) -> None:
    """A lifespan that raises: the worker processes exit with code 3 and the error, none is
    started again, and the job waiting for them is never claimed."""
    async with obs_app.build(db_url) as queue:
        job = await queue.tasks["where"].enqueue()
        proc = workers.start("--processes", "2", env={"OBS_FAIL_STARTUP": "1"}, app=APP)
        assert await proc.wait_exit(30) == 3
        out = proc.output()
        assert "did not start: the queue's lifespan raised RuntimeError: the database is unreachable" in out
        assert "starting another" not in out
        assert await statuses(queue) == {"queued": 1}
        assert (await job.info()).attempts == 0


async def test_a_cpu_process_whose_lifespan_fails_fails_its_job_and_the_worker_goes_on(
    workers: Workers, db_url: str,
) -> None:
    """A lifespan that fails only in cpu processes: the cpu job fails with a StartupError naming
    the cause, and the worker keeps running other jobs."""
    workers.start(env={"OBS_FAIL_CPU_STARTUP": "1"}, app=APP)
    async with obs_app.build(db_url) as queue:
        doomed = await queue.tasks["where_cpu"].enqueue()
        with pytest.raises(JobFailed) as failure:
            await doomed.result(timeout=30)
        assert failure.value.type == "conveyor.errors.StartupError"
        assert "lifespan raised RuntimeError: the model file is missing" in failure.value.error["message"]
        fine = await queue.tasks["where"].enqueue()
        assert (await fine.result(timeout=30))["cpu"] is False


async def test_metrics_of_two_processes_are_summed_in_one_scrape(
    workers: Workers, db_url: str, task_log: Path,
) -> None:
    """--processes 2 --metrics-port: one scrape, parsed by prometheus_client, shows what both
    processes did: attempts by outcome, timings, status counts, nothing in flight."""
    port = free_port()
    proc = workers.start("--processes", "2", "--concurrency", "2", "--metrics-port", str(port),
                         "--metrics-host", "127.0.0.1", app=APP)
    await until(lambda: len(lines(task_log, "lifespan-start")) >= 2, 30, "both processes up")
    async with obs_app.build(db_url) as queue:
        jobs = [await queue.tasks["pause"].enqueue(0.03) for _ in range(30)]
        jobs += [await queue.tasks["flaky"].enqueue() for _ in range(5)]
        jobs += [await queue.tasks["doomed"].enqueue() for _ in range(2)]

        async def finished() -> bool:
            counts = await statuses(queue)
            return counts == {"succeeded": 35, "dead": 2}

        await until(finished, 60, "every job finished")
        pids = {r.worker.split(":")[1] for r in await all_jobs(queue) if r.worker}
        assert len(pids) == 2, "both processes ran jobs"

    async def scrape() -> dict[str, float]:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = sample.name
                if sample.name == "conveyor_jobs":
                    key = f"conveyor_jobs:{sample.labels['status']}"
                totals[key] = totals.get(key, 0.0) + sample.value
        return totals

    # the status gauge is sampled every few seconds
    got = await until(lambda: _when(scrape(), lambda t: t.get("conveyor_jobs:succeeded") == 35),
                      30, "the status gauge")
    assert got["conveyor_jobs_started_total"] == 30 + 5 * 2 + 2 * 2
    assert got["conveyor_jobs_succeeded_total"] == 35
    assert got["conveyor_jobs_failed_total"] == 5 + 2 * 2
    assert got["conveyor_jobs_retried_total"] == 5 + 2
    assert got["conveyor_jobs_dead_total"] == 2
    assert got["conveyor_job_duration_seconds_count"] == 44
    assert got["conveyor_job_pickup_seconds_count"] == 44
    assert got["conveyor_jobs:dead"] == 2 and got["conveyor_jobs:queued"] == 0
    assert got["conveyor_jobs_in_flight"] == 0
    assert "conveyor_event_loop_lag_seconds" in got
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(30) == 0


async def _when(scraped: Any, good: Any) -> Any:
    value = await scraped
    return value if good(value) else None


async def test_a_request_its_job_and_the_jobs_attempts_in_another_process_share_one_trace(
    workers: Workers, db_url: str, tmp_path: Path,
) -> None:
    """A FastAPI request enqueues a job that fails once: the request's span, the send span and
    both attempts' process spans (exported by the worker process) are one trace."""
    spans_file = tmp_path / "spans.jsonl"
    workers.start(env={"OBS_SPANS": str(spans_file)}, app=APP)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    queue: Queue = obs_app.build(db_url, middleware=[OpenTelemetryMiddleware(provider)])
    app = FastAPI(lifespan=queue.lifespan(), telemetry={"tracer_provider": provider})

    @app.post("/signup")
    async def signup() -> dict[str, str]:
        job = await queue.tasks["flaky"].enqueue()
        return {"job": job.id}

    async with client_for(app) as client:
        job_id = (await client.post("/signup")).json()["job"]
        assert await queue.job(job_id).result(timeout=30) == 2

    def process_spans() -> list[dict[str, Any]]:
        if not spans_file.exists():
            return []
        found = [json.loads(line) for line in spans_file.read_text().splitlines()]
        return [s for s in found if s["name"] == "process default"]

    await until(lambda: len(process_spans()) == 2, 10, "both attempts exported")
    ours = {s.name: s for s in exporter.get_finished_spans()}
    request, send = ours["POST /signup"], ours["send default"]
    assert request.context is not None and send.context is not None and send.parent is not None
    trace_id = f"{request.context.trace_id:032x}"
    assert f"{send.context.trace_id:032x}" == trace_id
    first, second = sorted(process_spans(), key=lambda s: s["attributes"]["conveyor.attempt"])
    for span in (first, second):
        assert span["trace_id"] == trace_id
        assert span["parent_id"] == f"{send.context.span_id:016x}"
        assert span["kind"] == "CONSUMER" and span["pid"] != os.getpid()
        assert span["attributes"]["messaging.message.id"] == job_id
        assert span["attributes"]["messaging.system"] == "conveyor"
        assert span["attributes"]["messaging.destination.name"] == "default"
        assert span["attributes"]["conveyor.task"] == "flaky"
    assert first["attributes"]["conveyor.outcome"] == "retried"
    assert first["attributes"]["error.type"] == "RuntimeError"
    assert second["attributes"]["conveyor.outcome"] == "succeeded"
    assert "error.type" not in second["attributes"]
    assert send.attributes is not None and send.attributes["messaging.message.id"] == job_id
