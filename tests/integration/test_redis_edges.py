"""Redis at its edges: job records that vanish behind the scripts' back, and batch limits.

A record can disappear from Redis without a script noticing: evicted under memory pressure (a
``maxmemory-policy`` other than ``noeviction``) or deleted by hand. The index entries that name
it must then be skipped and dropped; no claim, enqueue or listing may raise, and no lane may
stay blocked. These tests delete records with a raw client and play the worker on the backend.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis_server import RedisServer

from conveyor import Queue
from conveyor.backends.base import Ack
from conveyor.backends.redis.backend import MAX_ENQUEUE_JOBS
from conveyor.errors import PayloadTooLarge

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def queue(redis_server: RedisServer) -> AsyncIterator[Queue]:
    """A queue with an ``echo`` task on its own key prefix of the session's redis-server."""
    q = Queue(redis_server.url(prefix=f"edge-{uuid.uuid4().hex[:8]}"))

    @q.task(name="echo")
    async def echo(x: int) -> int:
        return x

    async with q:
        yield q


@pytest.fixture
def raw(redis_server: RedisServer) -> redis.Redis:
    """A plain client on the same server, to delete records behind the backend's back."""
    return redis.Redis(port=redis_server.port, decode_responses=True)


def _vanish(queue: Queue, raw: redis.Redis, job_id: str) -> None:
    prefix = queue.backend.prefix  # type: ignore[attr-defined]
    assert raw.delete(f"{prefix}:job:{job_id}") == 1


async def _claim(queue: Queue, limit: int = 10) -> list[Any]:
    return await queue.backend.claim([queue.name], "w1", limit, 30.0)


async def test_a_queued_job_whose_record_vanished_is_skipped_by_claim(
    queue: Queue, raw: redis.Redis
) -> None:
    """A ready entry without a record is dropped; the claim takes the next job."""
    echo = queue.tasks["echo"]
    gone, kept = await echo.enqueue(1), await echo.enqueue(2)
    _vanish(queue, raw, gone.id)
    assert [r.id for r in await _claim(queue)] == [kept.id]


async def test_a_scheduled_job_whose_record_vanished_never_blocks_claims(
    queue: Queue, raw: redis.Redis, wait_until: Any
) -> None:
    """A due scheduled entry without a record is dropped; later jobs are claimed as usual."""
    echo = queue.tasks["echo"]
    gone = await echo.options(delay=0.2).enqueue(1)
    _vanish(queue, raw, gone.id)
    later = await echo.options(delay=0.3).enqueue(2)

    async def claimed() -> list[Any]:
        return await _claim(queue)

    got = await wait_until(claimed, timeout=5, message="the later scheduled job claimed")
    assert [r.id for r in got] == [later.id]
    now = await echo.enqueue(3)
    assert [r.id for r in await _claim(queue)] == [now.id]


async def test_a_lane_whose_head_vanished_is_freed_by_the_next_enqueue(
    queue: Queue, raw: redis.Redis
) -> None:
    """A lane headed by a vanished record runs its next job once the lane is touched again."""
    echo = queue.tasks["echo"].options(key="k")
    gone, second = await echo.enqueue(1), await echo.enqueue(2)
    _vanish(queue, raw, gone.id)
    assert await _claim(queue) == []  # the second waits behind the head...
    third = await echo.enqueue(3)  # ...until the lane is touched: the missing head is dropped
    (got,) = await _claim(queue)
    assert got.id == second.id
    assert await queue.backend.complete([Ack(got.id, got.lease_token, 2)]) == [True]
    assert [r.id for r in await _claim(queue)] == [third.id]


async def test_a_finishing_job_hands_its_lane_past_a_vanished_record(
    queue: Queue, raw: redis.Redis
) -> None:
    """When a lane's running job ends, a vanished next job is skipped: the one after runs."""
    echo = queue.tasks["echo"].options(key="k")
    first, gone, third = [await echo.enqueue(i) for i in range(3)]
    (running,) = await _claim(queue)
    assert running.id == first.id
    _vanish(queue, raw, gone.id)
    assert await queue.backend.complete([Ack(first.id, running.lease_token, 0)]) == [True]
    assert [r.id for r in await _claim(queue)] == [third.id]


async def test_a_unique_value_held_by_a_vanished_record_is_free_again(
    queue: Queue, raw: redis.Redis
) -> None:
    """Enqueue with a unique value whose holder vanished stores the new job."""
    echo = queue.tasks["echo"].options(unique="u")
    gone = await echo.enqueue(1)
    _vanish(queue, raw, gone.id)
    fresh = await echo.enqueue(2)
    assert fresh.id != gone.id
    assert (await fresh.info()).status == "queued"
    assert [r.id for r in await _claim(queue)] == [fresh.id]


async def test_lists_and_recovery_skip_vanished_records(queue: Queue, raw: redis.Redis) -> None:
    """Listing (with and without a status) and recovering never raise on a vanished record."""
    echo = queue.tasks["echo"]
    jobs = [await echo.enqueue(i) for i in range(3)]
    (running,) = await _claim(queue, limit=1)
    _vanish(queue, raw, running.id)
    _vanish(queue, raw, jobs[1].id)
    assert [r.id for r in await queue.list_jobs()] == [jobs[2].id]
    assert [r.id for r in await queue.list_jobs(status="queued")] == [jobs[2].id]
    assert await queue.list_jobs(status="running") == []
    assert await queue.backend.recover() == []


async def test_an_enqueue_over_the_batch_limit_is_refused_whole(queue: Queue) -> None:
    """More than MAX_ENQUEUE_JOBS jobs in one enqueue raise PayloadTooLarge; nothing is written."""
    echo = queue.tasks["echo"]
    with pytest.raises(PayloadTooLarge, match="split the batch"):
        await queue.enqueue_many([echo.prepare(i) for i in range(MAX_ENQUEUE_JOBS + 1)])
    assert set((await queue.stats()).values()) == {0}
    assert await queue.list_jobs() == []


async def test_open_warns_when_redis_may_evict_job_records(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """open() logs a warning naming the policy when maxmemory-policy is not noeviction."""
    with RedisServer(tmp_path / "redis") as server:
        raw = redis.Redis(port=server.port)
        async with Queue(server.url(prefix="evict")):
            pass
        assert "maxmemory-policy" not in caplog.text  # the default is noeviction
        raw.config_set("maxmemory-policy", "allkeys-lru")
        with caplog.at_level("WARNING", logger="conveyor.redis"):
            async with Queue(server.url(prefix="evict")):
                pass
        assert "maxmemory-policy allkeys-lru" in caplog.text


async def test_a_cancel_during_a_script_call_always_reaches_the_caller(queue: Queue) -> None:
    """A task cancelled while its script call is in flight ends cancelled, never runs on."""
    backend = queue.backend

    async def busy() -> None:
        while True:  # like a worker's loop: one script after another until it is cancelled
            await backend.recover()

    for i in range(200):
        task = asyncio.create_task(busy())
        for _ in range(i % 7):  # land the cancel at different points of the exchange
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"round {i}: the cancel was swallowed, the loop ran on"
        assert task.cancelled()
