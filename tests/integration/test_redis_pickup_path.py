"""The Redis pickup path: a hand-out reaches its job without a claim, and is confirmed at once.

A worker registered idle gets each new job published to it by the enqueue script. The job goes
from the listener straight to the worker (no claim loop step, no claim round trip per job); its
confirmation follows right behind its start, so Redis never takes back a job a live worker runs;
the worker renews its idle registration about once a second, not once per job.
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

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    """This test's store: its own key prefix on the session's redis-server."""
    return redis_server.url(prefix=f"pick-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def producer(url: str) -> AsyncIterator[Queue]:
    """The app side, in its own connection pool: enqueues ``echo`` jobs."""
    q = Queue(url)

    @q.task(name="echo")
    async def echo(x: int) -> int:
        return x

    async with q:
        yield q


def _count_scripts(queue: Queue) -> dict[str, int]:
    """Count the scripts the queue's backend runs, by name, from now on."""
    calls: dict[str, int] = {}
    backend: Any = queue.backend
    run = backend._run

    async def counted(name: str, *args: Any) -> Any:
        calls[name] = calls.get(name, 0) + 1
        return await run(name, *args)

    backend._run = counted
    return calls


async def test_a_stream_of_hand_outs_costs_no_claim_per_job(
    url: str, producer: Queue, wait_until: Any
) -> None:
    """Forty jobs enqueued one by one to an idle worker run with a handful of claims, not forty.

    (A registration counts down the worker's free slots as jobs are handed to it; with 50 slots
    none runs out here, and the worker renews it about once a second.)
    """
    worker_side = Queue(url)
    seen: list[int] = []

    @worker_side.task(name="echo")
    async def echo(x: int) -> int:
        seen.append(x)
        return x

    async with worker_side, worker_side.worker(concurrency=50):
        await wait_until(lambda: worker_side.backend._idle_at, message="worker registered idle")  # type: ignore[attr-defined]
        calls = _count_scripts(worker_side)
        for i in range(40):
            job = await producer.tasks["echo"].enqueue(i)
            assert await job.result(timeout=10) == i
        assert seen == list(range(40))
    # the registration is renewed about once a second; forty jobs took far less than 40 s
    assert calls.get("claim", 0) < 10, calls


async def test_a_hand_out_is_confirmed_while_its_job_still_runs(
    url: str, producer: Queue, redis_server: RedisServer, wait_until: Any
) -> None:
    """The confirmation follows the job's start at once: nothing is left to take back."""
    worker_side = Queue(url)
    started, release = asyncio.Event(), asyncio.Event()

    @worker_side.task(name="echo")
    async def echo(x: int) -> int:
        started.set()
        await release.wait()
        return x

    raw = redis.Redis(port=redis_server.port, decode_responses=True)
    prefix = producer.backend.prefix  # type: ignore[attr-defined]
    async with worker_side, worker_side.worker(concurrency=2) as worker:
        await wait_until(lambda: worker_side.backend._idle_at, message="worker registered idle")  # type: ignore[attr-defined]
        job = await producer.tasks["echo"].enqueue(7)
        await asyncio.wait_for(started.wait(), 5)
        info = await job.info()
        assert info.worker == worker.id and info.lease_token and "h" in info.lease_token  # handed
        # well inside the second after which Redis would take an unconfirmed hand-out back
        await wait_until(lambda: raw.zcard(f"{prefix}:handing") == 0, timeout=0.5,
                         message="the hand-out confirmed")
        release.set()
        assert await job.result(timeout=5) == 7
        assert (await job.info()).attempts == 1


async def test_claim_returns_a_hand_out_whose_message_was_lost(
    url: str, producer: Queue, wait_until: Any
) -> None:
    """A hand-out whose message never arrived comes with the next claim, even after others did."""
    side = Queue(url)
    async with side:
        backend: Any = side.backend
        assert await backend.claim(["default"], "A", 3, 30.0) == []
        first = await producer.tasks["echo"].enqueue(1)
        (taken,) = await wait_until(lambda: backend._hands.take("A", 3), message="first arrived")
        assert taken.id == first.id
        listener = backend._listener
        await listener.stop()  # the second hand-out's message is lost
        backend._listener = None
        backend._on_wake_all()  # what a listener whose connection dropped does: look again
        second = await producer.tasks["echo"].enqueue(2)
        assert (await second.info()).worker == "A"
        got = await backend.claim(["default"], "A", 3, 30.0)
        # the first arrived in order and is not sent again; the lost second comes with the claim
        assert [r.id for r in got] == [second.id]
        assert first.id != second.id


async def test_a_listener_stops_promptly_whenever_it_is_stopped(url: str) -> None:
    """Stopping the pub/sub listener ends it at once, however its read was interrupted.

    redis-py can swallow a cancel that lands mid-read; the listener used to go on reading (and
    ``queue.close()`` hung) about once in thirty stops made just after it connected.
    """
    q = Queue(url)
    async with q:
        backend: Any = q.backend
        for i in range(45):
            listener = backend._listen()
            listener.subscribe(f"{backend.prefix}:x", lambda _: None)
            if i % 3 == 1:
                await listener.ready([f"{backend.prefix}:x"])
            elif i % 3 == 2:
                await asyncio.sleep(0.001 * i)
            await asyncio.wait_for(asyncio.shield(listener.stop()), 3)
            backend._listener = None
