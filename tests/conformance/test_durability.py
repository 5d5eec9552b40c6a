"""Durable backends: jobs outlive the process that stored them, and processes share one store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor import Context, Queue

from .helpers import RESULT_TIMEOUT

WaitUntil = Callable[..., Awaitable[Any]]


def _durable_only(make_queue: Any) -> None:
    if not make_queue.durable:
        pytest.skip(f"{make_queue.backend}:// keeps nothing across a restart, by design")


def _register(queue: Queue, runs: list[int]) -> Any:
    @queue.task(name="echo")
    async def echo(x: int, ctx: Context) -> int:
        runs.append(ctx.attempt)
        return x

    return echo


async def test_queued_job_survives_closing_the_store(make_queue: Any) -> None:
    """A job enqueued before the store is closed is still queued when reopened, and runs."""
    _durable_only(make_queue)
    runs: list[int] = []
    first = make_queue()
    job = await _register(first, runs).enqueue(3)
    await first.close()

    second = make_queue()
    _register(second, runs)
    handle = second.job(job.id)
    assert await handle.status() == "queued"
    async with second.worker(concurrency=1):
        assert await handle.result(timeout=RESULT_TIMEOUT) == 3
    assert runs == [1]


async def test_job_running_at_a_crash_is_run_again(make_queue: Any, wait_until: WaitUntil) -> None:
    """A job that was running when its process died is put back after its lease and runs again."""
    _durable_only(make_queue)
    runs: list[int] = []
    crashed = make_queue()
    job = await _register(crashed, runs).enqueue(4)
    claimed = await crashed.backend.claim([crashed.name], "crashed-worker", 1, 0.2)
    assert [r.id for r in claimed] == [job.id]
    await crashed.close()  # the process is gone: no renew, no ack, no release

    survivor = make_queue()
    _register(survivor, runs)
    await wait_until(
        lambda: datetime.now(UTC) > claimed[0].lease_expires_at, message="lease expired"
    )
    async with survivor.worker(concurrency=1):
        assert await survivor.job(job.id).result(timeout=RESULT_TIMEOUT) == 4
    assert len(runs) == 1  # the crashed attempt never reached the body here


async def test_two_queue_objects_share_one_store(make_queue: Any) -> None:
    """A worker on one Queue object runs jobs another Queue object (another process) enqueues."""
    _durable_only(make_queue)
    runs: list[int] = []
    app, worker_side = make_queue(), make_queue()
    echo = _register(app, runs)
    _register(worker_side, runs)
    async with worker_side.worker(concurrency=2):
        first = await echo.enqueue(1)
        assert await first.result(timeout=RESULT_TIMEOUT) == 1
        second = await echo.options(delay=0.1).enqueue(2)
        assert await second.result(timeout=RESULT_TIMEOUT) == 2
    assert runs == [1, 1]
    assert (await app.backend.stats())["succeeded"] == 2
