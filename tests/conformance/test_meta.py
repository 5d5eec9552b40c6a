"""Job metadata: stored by every backend with the job, read by its task, bounded at enqueue."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Context, Queue, Retry
from conveyor.errors import BadMeta, JobFailed
from conveyor.serde import MAX_META_BYTES, MAX_META_ENTRIES

from .helpers import RESULT_TIMEOUT, assert_nothing_written

WaitUntil = Callable[..., Awaitable[Any]]


async def test_meta_is_stored_listed_and_read_by_each_attempt(queue: Queue) -> None:
    """options(meta=) is stored with the job, listed, served in to_dict, seen as ctx.meta by every
    attempt (a retry too, and a retry by hand), in async and def tasks; no meta reads as {}."""
    seen: list[dict[str, str]] = []

    @queue.task(retries=Retry(attempts=2, backoff=0.0))
    async def flaky(ctx: Context) -> None:
        seen.append(dict(ctx.meta))
        raise RuntimeError("always")

    @queue.task
    def threaded(ctx: Context) -> dict[str, str]:
        return dict(ctx.meta)

    meta = {"tenant": "acme", "trace": "x" * 300, "ünï": "cødé ✓"}
    job = await flaky.options(meta=meta).enqueue()
    plain = await threaded.enqueue()
    assert (await job.info()).meta == meta
    assert (await job.info()).to_dict()["meta"] == meta
    listed = {r.id: r.meta for r in await queue.list_jobs(limit=10)}
    assert listed == {job.id: meta, plain.id: {}}
    async with queue.worker(concurrency=2):
        with pytest.raises(JobFailed):
            await job.result(timeout=RESULT_TIMEOUT)
        assert await plain.result(timeout=RESULT_TIMEOUT) == {}
        assert seen == [meta, meta]
        await job.retry()
        with pytest.raises(JobFailed):
            await job.result(timeout=RESULT_TIMEOUT)
    assert seen == [meta] * 4
    assert (await job.info()).meta == meta


async def test_meta_reaches_a_worker_that_was_waiting(queue: Queue, wait_until: WaitUntil) -> None:
    """A job enqueued while a worker waits idle (Redis hands it over directly) keeps its meta."""

    @queue.task
    async def echo(ctx: Context) -> dict[str, str]:
        return dict(ctx.meta)

    async with queue.worker(concurrency=2):
        await echo.enqueue()  # the worker has been through one claim and waits again
        for i in range(3):
            job = await echo.options(meta={"n": str(i)}).enqueue()
            assert await job.result(timeout=RESULT_TIMEOUT) == {"n": str(i)}


async def test_a_batch_stores_each_jobs_own_meta(queue: Queue) -> None:
    """enqueue_many stores each job's meta, and options(meta=) calls add up (later keys win)."""

    @queue.task
    async def noop() -> None: ...

    call = noop.options(meta={"a": "1", "b": "1"}).options(meta={"b": "2"})
    jobs = await queue.enqueue_many([call.prepare(), noop.prepare(), call.prepare()])
    assert [(await j.info()).meta for j in jobs] == [{"a": "1", "b": "2"}, {}, {"a": "1", "b": "2"}]


async def test_meta_past_its_limits_is_refused_and_nothing_is_written(queue: Queue) -> None:
    """Meta of the largest size and entry count is stored; one entry or one byte more is a
    BadMeta at enqueue, as are non-str values and empty keys, and nothing is written."""

    @queue.task
    async def noop() -> None: ...

    many = {f"k{i}": "" for i in range(MAX_META_ENTRIES)}
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    biggest = {"k": "v" * (MAX_META_BYTES - overhead)}
    for bad in ({**many, "one-more": ""}, {"k": "v" * (MAX_META_BYTES - overhead + 1)},
                {"k": 1}, {"": "empty key"}, {"k\x00": "nul"}, {"k": "\ud800"}):
        with pytest.raises(BadMeta):
            await noop.options(meta=bad).enqueue()  # type: ignore[arg-type]
    with pytest.raises(BadMeta):
        noop.options(meta=[("k", "v")])  # type: ignore[arg-type]
    await assert_nothing_written(queue)
    for good in (many, biggest):
        job = await noop.options(meta=good).enqueue()
        assert (await job.info()).meta == good
