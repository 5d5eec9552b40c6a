"""Redis-only behaviour: surviving a server restart, pushed cancels, several worker processes,
password masking, retention of finished jobs and key namespaces.

Every test that stops or restarts Redis runs its own ``redis-server`` (AOF with fsync on every
write), so the session's shared test server is never disturbed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer

from conveyor import Queue
from conveyor.errors import BackendError, EnqueueError, JobCancelled

from .apps import cli_app
from .procs import Workers, all_jobs, read_log, statuses, until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, with AOF (appendfsync always)."""
    with RedisServer(tmp_path / "redis", aof=True) as srv:
        yield srv


@pytest.fixture
def db_url(server: RedisServer) -> str:
    """The store the ``workers`` and ``app_queue`` fixtures use: this test's own server."""
    return server.url(prefix="itest")


async def test_redis_restart_under_load_loses_no_accepted_job(
    app_queue: Queue, workers: Workers, server: RedisServer, task_log: Path
) -> None:
    """Redis is killed and restarted while two workers run: every accepted job succeeds, unaided."""
    first = workers.start("--concurrency", "20")
    second = workers.start("--concurrency", "20")
    for proc in (first, second):
        await proc.wait_output(" started on ")
    work = app_queue.tasks["work"]
    accepted: set[str] = set()
    refused = 0
    loop = asyncio.get_running_loop()

    async def produce(seconds: float) -> None:
        nonlocal refused
        end = loop.time() + seconds
        n = 0
        while loop.time() < end:
            try:
                jobs = await app_queue.enqueue_many([work.prepare(n + i, 0.02) for i in range(10)])
            except BackendError:  # Redis is down: not accepted, nothing to keep
                refused += 1
                await asyncio.sleep(0.05)
                continue
            accepted.update(job.id for job in jobs)
            n += 10
            await asyncio.sleep(0.01)

    producer = asyncio.create_task(produce(6.0))
    await until(lambda: len(accepted) >= 200, 20, "200 jobs accepted")
    server.kill(signal.SIGKILL)
    await asyncio.sleep(2.0)  # down for two seconds: workers and producer see errors
    server.start()
    await producer
    assert refused > 0, "the producer should have met the outage"
    assert first.alive and second.alive, "workers ride out a Redis restart"

    async def all_done() -> bool:
        return (await statuses(app_queue)).get("succeeded", 0) >= len(accepted)

    await until(all_done, 60, f"all {len(accepted)} accepted jobs succeeded")
    records = {r.id: r for r in await all_jobs(app_queue)}
    assert accepted <= set(records), "no accepted job is lost"
    assert all(records[i].status == "succeeded" for i in accepted)
    ended = {e.job_id for e in read_log(task_log) if e.event == "end"}
    assert accepted <= ended

    # and the workers still pick up new work promptly, by push
    job = await work.enqueue(-1, 0.0)
    assert await job.result(timeout=10) == -1
    for proc in (first, second):
        proc.signal(signal.SIGTERM)
        assert await proc.wait_exit(20) == 0


async def test_cancel_reaches_a_worker_process_within_a_second(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """A running job in another process is cancelled within 1 s, by push (the poll is 2 s)."""
    proc = workers.start("--concurrency", "2", env={"ITEST_HOLD": "30"})
    hold = app_queue.tasks["hold"]
    job = await hold.enqueue(1)
    await until(lambda: any(e.event == "start" for e in read_log(task_log)), 15, "job started")
    await asyncio.sleep(0.3)  # past any claim-time bookkeeping
    t0 = time.monotonic()
    await job.cancel()
    with pytest.raises(JobCancelled):
        await job.result(timeout=5)
    assert time.monotonic() - t0 < 1.0
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(20) == 0


async def test_three_worker_processes_share_one_redis(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """Three worker processes run every job exactly once, and keep each lane in enqueue order."""
    procs = [workers.start("--concurrency", "8") for _ in range(3)]
    for proc in procs:
        await proc.wait_output(" started on ")
    tick, step = app_queue.tasks["tick"], app_queue.tasks["step"]
    ids: set[str] = set()
    for batch in range(10):
        prepared = [tick.prepare(batch * 40 + i) for i in range(40)]
        prepared += [step.prepare(lane, batch * 4 + s) for s in range(4) for lane in range(3)]
        ids |= {job.id for job in await app_queue.enqueue_many(prepared)}
        await asyncio.sleep(0.02)  # spread over time, so every process gets its share

    async def all_succeeded() -> bool:
        return (await statuses(app_queue)).get("succeeded", 0) == len(ids)

    await until(all_succeeded, 60, f"all {len(ids)} jobs succeeded")
    for proc in procs:
        proc.signal(signal.SIGTERM)
        assert await proc.wait_exit(20) == 0

    log = read_log(task_log)
    runs = [e.job_id for e in log if e.event in ("run", "start")]
    assert sorted(runs) == sorted(ids), "every job ran exactly once"
    assert len({e.pid for e in log}) == 3, "all three processes took jobs"
    lanes: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for e in log:
        if e.event in ("start", "end"):
            lanes[e.fields[0]].append((e.event, int(e.fields[1])))
    for lane, events in lanes.items():
        expected = [(ev, seq) for seq in range(40) for ev in ("start", "end")]
        assert events == expected, f"lane {lane} ran out of order or overlapped"


@pytest.fixture
def secret_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that wants a password."""
    with RedisServer(tmp_path / "redis", password="pa55-w0rd-xyz") as srv:
        yield srv


async def test_password_never_appears_in_reprs_errors_or_logs(
    secret_server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The URL's password is masked in reprs and logs, and absent from error messages."""
    secret = "pa55-w0rd-xyz"
    url = secret_server.url(prefix="masked")
    queue = Queue(url)
    assert secret not in repr(queue) and secret not in repr(queue.backend)
    assert ":***@" in queue.backend.safe_url
    as_option = Queue(f"redis://127.0.0.1:{secret_server.port}/0?password={secret}")
    assert secret not in repr(as_option) and "password=***" in repr(as_option)

    @queue.task
    async def ping() -> str:
        return "pong"

    caplog.set_level(logging.DEBUG)
    async with queue, queue.worker(concurrency=1):
        assert await (await ping.enqueue()).result(timeout=10) == "pong"
    assert secret not in caplog.text
    assert "***" in caplog.text  # the worker's start line names the store, masked

    wrong = Queue(secret_server.url(prefix="masked").replace(secret, "not-the-password"))
    with pytest.raises(BackendError) as caught:
        await wrong.open()
    assert "not-the-password" not in str(caught.value)


@pytest.fixture
async def short_lived(redis_server: RedisServer) -> AsyncIterator[Queue]:
    """A queue whose finished jobs are kept 1 second (``?retention=1``)."""
    queue = Queue(redis_server.url(prefix=f"ttl-{uuid.uuid4().hex[:8]}", retention="1"))
    async with queue:
        yield queue


async def test_finished_jobs_expire_after_the_retention(
    short_lived: Queue, redis_server: RedisServer
) -> None:
    """Finished jobs (record, result, events) go after ``retention`` seconds; waiting ones stay."""
    queue = short_lived
    backend = queue.backend
    prefix = backend.prefix  # type: ignore[attr-defined]

    @queue.task
    async def square(x: int) -> int:
        return x * x

    waiting = await square.options(delay=3600).enqueue(0)
    jobs = [await square.enqueue(i) for i in range(20)]
    async with queue.worker(concurrency=5):
        for i, job in enumerate(jobs):
            assert await job.result(timeout=10) == i * i
    client = redis.Redis(port=redis_server.port)
    ttl = client.ttl(f"{prefix}:job:{jobs[0].id}")
    assert 0 < ttl <= 1
    assert (await queue.stats())["succeeded"] == 20

    await asyncio.sleep(1.2)
    await backend.recover()  # workers call it every few seconds; it prunes the indexes
    assert await backend.get(jobs[0].id) is None
    stats = await queue.stats()
    assert (stats["succeeded"], stats["scheduled"]) == (0, 1)
    assert [r.id for r in await queue.list_jobs()] == [waiting.id]
    job_keys = [k for k in client.scan_iter(f"{prefix}:job:*")]
    assert job_keys == [f"{prefix}:job:{waiting.id}".encode()]


async def test_prefixes_and_queue_names_keep_jobs_apart(redis_server: RedisServer) -> None:
    """Two apps (prefixes) and two queue names on one Redis never see each other's jobs."""
    tag = uuid.uuid4().hex[:8]
    app_a = Queue(redis_server.url(prefix=f"a-{tag}"), name="mail")
    app_b = Queue(redis_server.url(prefix=f"b-{tag}"), name="mail")
    other = Queue(redis_server.url(prefix=f"a-{tag}"), name="reports")
    ran: list[str] = []
    for q, label in ((app_a, "a"), (app_b, "b"), (other, "reports")):

        @q.task(name="hello")
        async def hello(label: str = label) -> None:
            ran.append(label)

    async with app_a, app_b, other:
        job_a = await app_a.tasks["hello"].enqueue()
        await app_b.tasks["hello"].enqueue()
        await other.tasks["hello"].enqueue()
        async with app_a.worker(concurrency=2):
            await job_a.result(timeout=10)
            await asyncio.sleep(0.2)  # time enough to (wrongly) take the others
        assert ran == ["a"]
        assert (await app_b.stats())["queued"] == 1
        assert (await other.stats())["queued"] == 1
        assert [r.id for r in await app_a.list_jobs(all_queues=True)] != []
        assert len(await app_a.list_jobs(all_queues=True)) == 2  # its own two queues only


def test_bad_redis_urls_are_config_errors() -> None:
    """Unknown schemes and bad options are refused before anything connects."""
    from conveyor.errors import ConfigError

    with pytest.raises(ConfigError):
        Queue("redis://localhost/0?retention=soon")
    with pytest.raises(ConfigError):
        Queue("redis://localhost/0?prefix=")
    assert issubclass(EnqueueError, Exception)  # keeps the import honest for type checkers


def test_cli_app_settings_poll_slower_than_push() -> None:
    """The worker's cancel backstop is slower than the 1 s the cancel test demands."""
    from conveyor.worker.engine import _CANCEL_BACKSTOP

    assert cli_app.SETTINGS.cancel_poll < 1.0 <= _CANCEL_BACKSTOP


async def test_a_handed_job_whose_message_is_lost_comes_with_the_next_claim(
    redis_server: RedisServer,
) -> None:
    """A job handed to an idle worker that missed the message is returned by its next claim."""
    from conveyor.backends.base import Ack

    url = redis_server.url(prefix=f"hand-{uuid.uuid4().hex[:8]}")
    worker_side, producer = Queue(url), Queue(url)

    @producer.task(name="echo")
    async def echo(x: int) -> int:
        return x

    async with worker_side, producer:
        backend = worker_side.backend
        assert await backend.claim(["default"], "w1", 10, 30.0) == []  # idle: registered
        listener = backend._listener  # type: ignore[attr-defined]
        await listener.stop()  # the worker goes deaf: the hand-out message is lost
        job = await echo.enqueue(7)
        assert (await job.info()).status == "running"  # claimed for w1 by the enqueue
        (again,) = await backend.claim(["default"], "w1", 10, 30.0)
        assert again.id == job.id and again.lease_token
        assert await backend.complete([Ack(job.id, again.lease_token, 7)]) == [True]
        assert await job.result(timeout=5) == 7


async def test_hand_off_to_an_idle_worker_keeps_priority_order(redis_server: RedisServer) -> None:
    """A batch enqueued to an idle worker is handed out best first: priority, then enqueue order."""
    queue = Queue(redis_server.url(prefix=f"order-{uuid.uuid4().hex[:8]}"))
    ran: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        ran.append(label)

    async with queue, queue.worker(concurrency=1):
        await asyncio.sleep(0.2)  # the worker has claimed nothing and waits, registered idle
        jobs = await queue.enqueue_many([
            record.prepare("low"), record.options(priority=5).prepare("high"),
            record.prepare("low2"), record.options(priority=5).prepare("high2"),
        ])
        for job in jobs:
            await job.result(timeout=10)
    assert ran == ["high", "high2", "low", "low2"]
