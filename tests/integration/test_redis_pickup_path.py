"""The Redis pickup path: a hand-out reaches its job without a claim, and is confirmed at once.

A worker registered idle gets each new job published to it by the enqueue script. The job goes
from the listener straight to the worker (no claim loop step, no claim round trip per job); its
confirmation is sent before the job begins, so a job whose first step holds the event loop is not
taken back from the live worker running it; the worker renews its idle registration about once a
second, not once per job, and only its own registration decides when it claims again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_server import RedisServer

from conveyor import Queue
from integration.apps import cli_app
from integration.procs import Workers, count, read_log, until

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


async def test_an_idle_worker_does_not_spin_while_another_of_its_process_is_busy(
    url: str, wait_until: Any
) -> None:
    """Two workers on one backend: one busy for good does not make the other claim in a loop.

    The idle one's claims are paced by its own registration (about one a second); it used to
    take the oldest registration of any worker, and claimed some 2,000 times a second.
    """
    q = Queue(url)
    release = asyncio.Event()

    @q.task(name="long")
    async def long() -> None:
        await release.wait()

    producer = Queue(url, name="a")
    producer.task(name="long")(long.fn)
    async with q, producer:
        busy, idle = q.worker(concurrency=1, queues=["a"]), q.worker(concurrency=1, queues=["b"])
        async with busy, idle:
            backend: Any = q.backend
            await wait_until(lambda: busy.id in backend._idle_at and idle.id in backend._idle_at,
                             message="both registered idle")
            job = await producer.tasks["long"].enqueue()  # handed to the busy one
            await wait_until(lambda: busy.running == 1, message="the long job started")
            assert (await job.info()).worker == busy.id
            await asyncio.sleep(1.2)  # its registration grows old: it never claims while full
            calls = _count_scripts(q)
            await asyncio.sleep(2.0)  # measuring a rate over a window: nothing to wait for
            release.set()
            await job.result(timeout=5)
    assert calls.get("claim", 0) <= 8, calls


async def test_the_worker_counts_as_idle_only_when_redis_registered_it(
    url: str, producer: Queue, wait_until: Any
) -> None:
    """A claim whose slots a hand-out in flight filled leaves the worker unregistered, and says so."""
    side = Queue(url)
    async with side:
        backend: Any = side.backend
        assert await backend.claim(["default"], "A", 1, 30.0) == []  # registered, one slot
        assert "A" in backend._idle_at
        held: list[tuple[str, str]] = []
        deliver = backend._hands.on_message
        backend._hands.on_message = lambda worker, data: held.append((worker, data))
        await producer.tasks["echo"].enqueue(1)  # handed to A; its message is held back
        await wait_until(lambda: held, message="the hand-out message arrived (held back)")
        run = backend._scripts.run

        async def claim_in_flight(name: str, *args: Any) -> Any:
            out = await run(name, *args)
            if name == "claim":  # the message lands while the claim is on its way back
                for worker, data in held:
                    deliver(worker, data)
            return out

        backend._scripts.run = claim_in_flight
        got = await backend.claim(["default"], "A", 1, 30.0)
        assert len(got) == 1
        raw = redis.Redis.from_url(url.split("?")[0], decode_responses=True)
        registered = bool(raw.exists(f"{backend.prefix}:idle:A"))
        assert ("A" in backend._idle_at) == registered


async def test_a_job_whose_first_step_holds_the_loop_is_not_taken_back(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A handed job that blocks its worker's loop for over a second still runs once.

    Its confirmation now leaves before it begins; sent behind its first step, it reached Redis
    after the second it allows, another worker's claim took the job back and ran it again.
    """
    url = redis_server.url(prefix=f"stall-{uuid.uuid4().hex[:8]}")
    log = tmp_path / "tasks.log"
    workers = Workers(tmp_path, url, log)
    raw = redis.Redis(port=redis_server.port, decode_responses=True)
    prefix = url.split("prefix=")[1]
    app = cli_app.build(url)
    try:
        for _ in range(2):
            workers.start("--concurrency", "4", env={"ITEST_HOLD": "1.3", "ITEST_LEASE": "30"})
        async with app:
            await until(lambda: raw.scard(f"{prefix}:q:default:idle") == 2, 15,
                        "both workers registered idle")
            for n in range(3):
                job = await app.tasks["stall"].enqueue(n)
                assert await job.result(timeout=15) == n
                print("EVENTS", [(e.type, e.data) for e in await app.backend.events(job.id)])
                await until(lambda: raw.scard(f"{prefix}:q:default:idle") == 2, 15,
                            "both workers idle again")
        assert count(log, "start") == dict.fromkeys(count(log, "start"), 1), read_log(log)
        assert len(count(log, "start")) == 3
    finally:
        workers.destroy_all()


async def test_commands_leave_at_once_unless_the_url_bounds_them(redis_server: RedisServer) -> None:
    """No socket timeout unless asked: redis-py 8's default (5 s) sends each command from a
    task of its own, a loop step later (after whatever blocking step comes first)."""
    plain = Queue(redis_server.url(prefix=f"to-{uuid.uuid4().hex[:8]}"))
    bounded = Queue(redis_server.url(prefix=f"to-{uuid.uuid4().hex[:8]}") + "&socket_timeout=2")
    async with plain, bounded:
        for queue, want in ((plain, None), (bounded, 2.0)):
            backend: Any = queue.backend
            await backend._scripts.command("PING")
            (conn,) = backend._scripts._idle_conns[-1:]
            assert conn.socket_timeout == want
