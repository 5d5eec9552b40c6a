"""Redis judges due times by its own clock, whatever the clock of the process that asked.

A client process whose clock is an hour off still gets ``delay=0.3`` and a 0.3 s retry backoff
as asked: the backend measures how far its clock is from Redis' ``TIME`` (on a round trip of its
own, refreshed every 30 s) and sends due times on the Redis clock. The
skew is simulated by patching ``utcnow`` everywhere this process reads the wall clock for a due
time (the task layer, the worker's retry, the Redis backend); the server stays real.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from redis_server import RedisServer

from conveyor import Queue, Retry
from conveyor.model import utcnow

pytestmark = pytest.mark.timeout(60)

SKEWS = [timedelta(hours=1), -timedelta(hours=1)]


@pytest.fixture(params=SKEWS, ids=["ahead", "behind"])
def skewed_clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> timedelta:
    """This process' wall clock is an hour ahead of (or behind) the Redis server's."""
    skew: timedelta = request.param

    def now() -> datetime:
        return utcnow() + skew

    for module in ("conveyor.task", "conveyor.worker.attempt", "conveyor.backends.redis.clock"):
        monkeypatch.setattr(f"{module}.utcnow", now)
    return skew


@pytest.fixture
async def queue(redis_server: RedisServer, skewed_clock: timedelta) -> AsyncIterator[Queue]:
    """A queue on its own key prefix, opened with the skewed client clock."""
    q = Queue(redis_server.url(prefix=f"clock-{uuid.uuid4().hex[:8]}"))
    async with q:
        yield q


async def test_a_delay_is_honoured_by_the_redis_clock(queue: Queue) -> None:
    """delay=0.3 from a skewed client runs 0.3 s after enqueue, by the server's clock."""

    @queue.task
    async def echo(x: int) -> int:
        return x

    t0 = time.monotonic()
    job = await echo.options(delay=0.3).enqueue(5)
    record = await job.info()
    assert record.status == "scheduled"
    (queued, *_) = await queue.backend.events(job.id)  # stamped by the Redis clock
    assert record.scheduled_for is not None
    assert 0.25 <= (record.scheduled_for - queued.at).total_seconds() <= 0.35
    async with queue.worker(concurrency=2):
        assert await job.result(timeout=5) == 5
        elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"done after {elapsed:.2f} s"
    started = (await job.info()).started_at
    assert started is not None and started >= record.scheduled_for


async def test_a_retry_backoff_is_honoured_by_the_redis_clock(queue: Queue) -> None:
    """A retry with backoff 0.3 s from a skewed worker runs again about 0.3 s later."""
    calls: list[float] = []

    @queue.task(retries=Retry(attempts=2, backoff=0.3, jitter=False))
    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    job = await flaky.enqueue()
    async with queue.worker(concurrency=2):
        assert await job.result(timeout=5) == "ok"
    assert len(calls) == 2
    assert 0.25 <= calls[1] - calls[0] < 2.0


async def test_a_wait_behind_a_long_script_does_not_move_a_due_time(redis_server: RedisServer) -> None:
    """``at=`` from a client whose clock is right is stored as asked, even when Redis is busy."""
    import asyncio
    from datetime import UTC

    import redis.asyncio as aioredis

    q = Queue(redis_server.url(prefix=f"clock-{uuid.uuid4().hex[:8]}"))

    @q.task
    async def echo(x: int) -> int:
        return x

    busy = aioredis.Redis(port=redis_server.port)
    async with q:
        # another client's script holds the server for 1.5 s while this enqueue waits its turn
        spin = "local s = redis.call('TIME') while redis.call('TIME')[1] - s[1] < 2 do end return 1"
        hog = asyncio.ensure_future(busy.eval(spin, 0))
        await asyncio.sleep(0.2)  # the script is running (a deadline to pass, not an event)
        at = datetime.now(UTC) + timedelta(seconds=5)
        job = await echo.options(at=at).enqueue(1)
        await hog
        stored = (await job.info()).scheduled_for
        assert stored is not None and abs((stored - at).total_seconds()) < 0.1, (stored, at)
    await busy.aclose()
