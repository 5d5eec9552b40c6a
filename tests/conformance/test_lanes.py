"""Key lanes: jobs sharing a key run one at a time in enqueue order; other keys run in parallel."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Queue, Retry
from conveyor.errors import JobFailed

from .helpers import RESULT_TIMEOUT, Gate

WaitUntil = Callable[..., Awaitable[Any]]


async def test_same_key_runs_one_at_a_time_in_enqueue_order(queue: Queue) -> None:
    """With concurrency 10, jobs of one key never overlap and run in enqueue order."""
    ran: dict[str, list[int]] = defaultdict(list)
    active: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)

    @queue.task(key="lane:{lane}")
    async def step(lane: str, n: int) -> None:
        active[lane] += 1
        peak[lane] = max(peak[lane], active[lane])
        ran[lane].append(n)
        for _ in range(3):  # give any wrongly claimed sibling a chance to overlap
            await asyncio.sleep(0.005)
        active[lane] -= 1

    jobs = []
    for n in range(6):
        for lane in ("a", "b"):
            jobs.append(await step.enqueue(lane, n))

    async with queue.worker(concurrency=10):
        for job in jobs:
            await job.result(timeout=RESULT_TIMEOUT)

    assert ran == {"a": list(range(6)), "b": list(range(6))}
    assert peak == {"a": 1, "b": 1}


async def test_lane_blocks_until_its_head_finishes(queue: Queue, wait_until: WaitUntil) -> None:
    """A job waits while an earlier job of its key runs, though later jobs of other keys run."""
    gate = Gate()

    @queue.task(key="k:{k}")
    async def work(k: str, label: str, hold: bool) -> str:
        if hold:
            await gate.wait()
        return label

    first = await work.enqueue("x", "first", True)
    second = await work.enqueue("x", "second", False)
    other = await work.enqueue("y", "other", False)

    async with queue.worker(concurrency=10):
        await wait_until(lambda: gate.entered == 1, message="first job started")
        # `other` was enqueued after `second`: once it has finished, `second` was passed over
        assert await other.result(timeout=RESULT_TIMEOUT) == "other"
        assert await second.status() == "queued"
        assert await first.status() == "running"
        gate.open()
        assert await first.result(timeout=RESULT_TIMEOUT) == "first"
        assert await second.result(timeout=RESULT_TIMEOUT) == "second"

    first_info, second_info = await first.info(), await second.info()
    assert first_info.finished_at is not None and second_info.started_at is not None
    assert second_info.started_at >= first_info.finished_at


async def test_different_keys_run_in_parallel(queue: Queue) -> None:
    """Two jobs with different keys are inside their bodies at the same time."""
    inside = {"a": asyncio.Event(), "b": asyncio.Event()}

    @queue.task(key="pair:{me}")
    async def meet(me: str, other: str) -> str:
        inside[me].set()
        # only returns if the other job is running at the same time
        await asyncio.wait_for(inside[other].wait(), timeout=5)
        return me

    a = await meet.enqueue("a", "b")
    b = await meet.enqueue("b", "a")
    async with queue.worker(concurrency=10):
        assert await a.result(timeout=RESULT_TIMEOUT) == "a"
        assert await b.result(timeout=RESULT_TIMEOUT) == "b"


async def test_lane_order_wins_over_priority(queue: Queue) -> None:
    """Within a lane, enqueue order decides even when a later job has higher priority."""
    ran: list[str] = []

    @queue.task(key="same")
    async def record(label: str) -> None:
        ran.append(label)

    jobs = [
        await record.enqueue("low-first"),
        await record.options(priority=10).enqueue("high-second"),
        await record.options(priority=-10).enqueue("lowest-third"),
    ]
    async with queue.worker(concurrency=10):
        for job in jobs:
            await job.result(timeout=RESULT_TIMEOUT)
    assert ran == ["low-first", "high-second", "lowest-third"]


async def test_retrying_job_keeps_its_lane_blocked(queue: Queue) -> None:
    """A job waiting between attempts holds its lane: the next job of the key waits for it."""
    ran: list[str] = []
    failures = {"flaky": 2}

    @queue.task(key="lane", retries=Retry(attempts=3, backoff=0.1, jitter=False))
    async def work(label: str) -> str:
        ran.append(label)
        if failures.get(label, 0) > 0:
            failures[label] -= 1
            raise RuntimeError(f"{label} not yet")
        return label

    flaky = await work.enqueue("flaky")
    after = await work.enqueue("after")
    async with queue.worker(concurrency=10):
        assert await flaky.result(timeout=RESULT_TIMEOUT) == "flaky"
        assert await after.result(timeout=RESULT_TIMEOUT) == "after"

    assert ran == ["flaky", "flaky", "flaky", "after"]
    assert (await flaky.info()).attempts == 3


async def test_delayed_job_blocks_the_jobs_after_it_in_its_lane(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """A delayed job keeps later jobs of its key waiting until it has run."""
    ran: list[str] = []

    @queue.task(key="lane")
    async def record(label: str) -> None:
        ran.append(label)

    @queue.task
    async def marker() -> None: ...

    delayed = await record.options(delay=0.4).enqueue("delayed")
    later = await record.enqueue("later")
    async with queue.worker(concurrency=10):
        await (await marker.enqueue()).result(timeout=RESULT_TIMEOUT)  # the worker is claiming
        assert await later.status() == "queued"
        assert ran == []
        await delayed.result(timeout=RESULT_TIMEOUT)
        await later.result(timeout=RESULT_TIMEOUT)
    assert ran == ["delayed", "later"]


async def test_key_template_and_literal_key_are_stored(queue: Queue) -> None:
    """A key template is filled from the arguments; ``options(key=)`` sets a literal key."""

    @queue.task(key="match:{match_id}")
    async def store(match_id: int, stats: dict[str, int]) -> None: ...

    @queue.task(key="{kind}:{ident}")
    async def defaulted(ident: int, kind: str = "user") -> None: ...

    @queue.task
    async def plain() -> None: ...

    templated = await store.enqueue(7, {"goals": 2})
    by_kwarg = await store.enqueue(stats={}, match_id=8)
    literal = await plain.options(key="user:1").enqueue()
    keyless = await plain.enqueue()

    assert (await templated.info()).key == "match:7"
    assert (await by_kwarg.info()).key == "match:8"
    assert (await literal.info()).key == "user:1"
    assert (await keyless.info()).key is None
    assert (await (await defaulted.enqueue(3)).info()).key == "user:3"
    assert (await (await defaulted.enqueue(3, kind="team")).info()).key == "team:3"


async def test_finished_lane_does_not_block_new_jobs(queue: Queue) -> None:
    """After every job of a key has ended (succeeded, failed or cancelled), a new job of it runs."""

    @queue.task(key="lane")
    async def work(fail: bool) -> str:
        if fail:
            raise ValueError("nope")
        return "ok"

    cancelled = await work.enqueue(False)
    await cancelled.cancel()
    async with queue.worker(concurrency=4):
        failed = await work.enqueue(True)
        with pytest.raises(JobFailed):
            await failed.result(timeout=RESULT_TIMEOUT)
        ok = await work.enqueue(False)
        assert await ok.result(timeout=RESULT_TIMEOUT) == "ok"
    assert await failed.status() == "failed"
    assert await cancelled.status() == "cancelled"


async def test_lanes_hold_across_two_workers(queue: Queue) -> None:
    """Two workers on one queue still run a key's jobs one at a time, in enqueue order."""
    ran: list[int] = []
    active = {"n": 0, "peak": 0}

    @queue.task(key="shared")
    async def step(n: int) -> None:
        active["n"] += 1
        active["peak"] = max(active["peak"], active["n"])
        ran.append(n)
        for _ in range(3):
            await asyncio.sleep(0.005)
        active["n"] -= 1

    jobs = [await step.enqueue(n) for n in range(8)]
    async with queue.worker(concurrency=5), queue.worker(concurrency=5):
        for job in jobs:
            await job.result(timeout=RESULT_TIMEOUT)
    assert ran == list(range(8))
    assert active["peak"] == 1


async def test_cancelling_the_running_head_hands_the_lane_on(
    queue: Queue, wait_until: WaitUntil
) -> None:
    """When the running job of a lane is cancelled, the next job of the key runs."""
    gate = Gate()

    @queue.task(key="lane")
    async def work(label: str) -> str:
        if label == "head":
            await gate.wait()
        return label

    head = await work.enqueue("head")
    nxt = await work.enqueue("next")
    async with queue.worker(concurrency=4):
        await wait_until(lambda: gate.entered == 1, message="head started")
        await head.cancel()
        assert await nxt.result(timeout=RESULT_TIMEOUT) == "next"
    assert await head.status() == "cancelled"
