"""Hand-off to idle workers on Redis: a job handed to a worker that died is not stuck.

A worker whose claim came back empty registers as idle, and the next enqueue claims a job for
it and publishes the record on its channel. If that worker died in the meantime, nobody
confirms the hand-out: within about a second the job goes back to its queue, at its old place,
without an attempt or a lost lease counted, and another worker runs it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis_server import RedisServer

from conveyor import Queue
from conveyor.backends.base import Ack

pytestmark = pytest.mark.timeout(60)

#: lib.lua's HAND_CONFIRM: seconds a worker has to confirm a hand-out
HAND_CONFIRM = 1.0


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    """This test's store: its own key prefix on the session's redis-server."""
    return redis_server.url(prefix=f"hand-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def producer(url: str) -> AsyncIterator[Queue]:
    """The app side: enqueues ``echo`` jobs."""
    q = Queue(url)

    @q.task(name="echo")
    async def echo(x: int) -> int:
        return x

    async with q:
        yield q


async def _dead_idle_worker(url: str) -> Queue:
    """A worker "A" registered idle (its claim came back empty) that then went deaf and dumb."""
    side = Queue(url)
    await side.open()
    assert await side.backend.claim(["default"], "A", 1, 30.0) == []
    listener = side.backend._listener  # type: ignore[attr-defined]
    await listener.stop()  # it hears nothing more: the hand-out message is lost, never confirmed
    return side


def _lost(redis_server: RedisServer, prefix: str, job_id: str) -> str | None:
    raw = redis.Redis(port=redis_server.port, decode_responses=True)
    value: str | None = raw.hget(f"{prefix}:job:{job_id}", "lost")  # type: ignore[assignment]
    return value


async def test_an_unconfirmed_hand_out_comes_back_at_its_place_uncounted(
    url: str, producer: Queue, redis_server: RedisServer
) -> None:
    """A job handed to a dead idle worker returns to the front of its queue after a second."""
    dead = await _dead_idle_worker(url)
    try:
        echo = producer.tasks["echo"]
        handed = await echo.enqueue(1)
        later = [await echo.enqueue(i) for i in (2, 3)]
        info = await handed.info()
        assert (info.status, info.worker) == ("running", "A")  # claimed for A by the enqueue
        await asyncio.sleep(HAND_CONFIRM + 0.1)  # a deadline to pass, not an event to wait for
        b = producer.backend
        (got,) = await b.claim(["default"], "B", 1, 30.0)
        assert got.id == handed.id  # its old place: ahead of the jobs enqueued after it
        assert got.attempts == 1  # the hand-out that never ran is not counted
        assert _lost(redis_server, b.prefix, handed.id) is None  # type: ignore[attr-defined]
        assert await b.complete([Ack(got.id, got.lease_token or "", 1)]) == [True]
        assert [r.id for r in await b.claim(["default"], "B", 5, 30.0)] == [j.id for j in later]
    finally:
        await dead.close()


async def test_another_worker_runs_a_job_handed_to_a_dead_one_within_two_seconds(
    url: str, producer: Queue, redis_server: RedisServer
) -> None:
    """A live worker runs the job handed to a dead idle one within ~2 s, no lost lease counted."""
    dead = await _dead_idle_worker(url)
    try:
        t0 = time.monotonic()
        job = await producer.tasks["echo"].enqueue(7)
        assert (await job.info()).worker == "A"
        async with producer.worker(concurrency=2):
            assert await job.result(timeout=10) == 7
            elapsed = time.monotonic() - t0
        assert elapsed < 3.0, f"done after {elapsed:.2f} s"
        info = await job.info()
        assert info.attempts == 1 and info.worker != "A"
        assert _lost(redis_server, producer.backend.prefix, job.id) is None  # type: ignore[attr-defined]
    finally:
        await dead.close()


async def test_a_live_idle_worker_keeps_what_it_is_handed(url: str, producer: Queue) -> None:
    """A hand-out to a live idle worker is confirmed: it does not come back to the queue."""
    side = Queue(url)
    async with side:
        backend = side.backend
        assert await backend.claim(["default"], "A", 1, 30.0) == []
        job = await producer.tasks["echo"].enqueue(1)
        assert (await job.info()).worker == "A"
        (got,) = await backend.claim(["default"], "A", 1, 30.0)  # taken from the message
        assert got.id == job.id
        await asyncio.sleep(HAND_CONFIRM + 0.1)  # past the deadline an unconfirmed hand-out has
        assert await producer.backend.claim(["default"], "B", 1, 30.0) == []
        assert await producer.backend.recover() == []
        assert await backend.complete([Ack(got.id, got.lease_token or "", 1)]) == [True]


async def _late_hand_out(a: Any, producer: Queue, redis_server: RedisServer) -> tuple[Any, str]:
    """Worker "A" (backend ``a``) registers idle, then is stopped: the job handed to it is taken
    back and run by another worker. Returns the job and the hand-out message A never read."""
    assert await a.claim(["default"], "A", 1, 30.0) == []
    await a._listener.stop()  # A is stopped: it reads nothing
    raw = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    pubsub = raw.pubsub()
    try:
        await pubsub.subscribe(f"{a.prefix}:hand:A")
        job = await producer.tasks["echo"].enqueue(1)
        assert (await job.info()).worker == "A"
        message = None
        while message is None or message["type"] != "message":
            message = await pubsub.get_message(timeout=5)
        async with producer.worker(concurrency=1):  # B takes it back and runs it
            assert await job.result(timeout=10) == 1
        return job, message["data"]
    finally:
        await pubsub.aclose()
        await raw.aclose()


async def test_a_hand_out_that_reaches_its_worker_late_is_not_run_there_again(
    url: str, producer: Queue, redis_server: RedisServer
) -> None:
    """A hand-out taken back (its worker was stopped) and run elsewhere is not started when it arrives."""
    side = Queue(url)
    async with side:
        a: Any = side.backend
        job, data = await _late_hand_out(a, producer, redis_server)
        # A resumes: the message it never read arrives now, then its claim loop runs
        a._hands.on_message("A", data)
        assert await a.claim(["default"], "A", 1, 30.0) == []
    info = await job.info()
    assert (info.status, info.attempts) == ("succeeded", 1)


async def test_a_hand_out_taken_back_and_claimed_in_one_script_is_still_recovered(
    url: str, producer: Queue
) -> None:
    """The claim that takes back an unconfirmed hand-out and takes it itself leaves it recoverable."""
    dead = await _dead_idle_worker(url)
    try:
        job = await producer.tasks["echo"].enqueue(1)
        assert (await job.info()).worker == "A"
        await asyncio.sleep(HAND_CONFIRM + 0.1)  # a deadline to pass, not an event to wait for
        b = producer.backend
        (got,) = await b.claim(["default"], "B", 1, 0.2)  # B takes it back and claims it at once
        assert got.id == job.id
        # then B dies without a word: its short lease runs out and recovery must find the job
        await asyncio.sleep(0.3)
        assert await b.recover() == [job.id]
        assert (await job.info()).status == "queued"
    finally:
        await dead.close()


async def test_a_late_hand_out_is_checked_even_when_the_wall_clock_steps_back(
    url: str, producer: Queue, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-out's age is judged without the wall clock: stepping it back does not make it fresh."""
    side = Queue(url)
    async with side:
        a: Any = side.backend
        _, data = await _late_hand_out(a, producer, redis_server)
        wall = time.time
        monkeypatch.setattr(time, "time", lambda: wall() - 5.0)  # NTP steps the clock back
        a._hands.on_message("A", data)
        assert await a.claim(["default"], "A", 1, 30.0) == []
