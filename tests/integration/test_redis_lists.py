"""Redis listing by status: one index per queue and status, so a page never walks other jobs.

The dashboard lists jobs by status, 50 at a time, on stores holding a million finished jobs. On
Redis each (queue, status) has its own index by enqueue sequence, kept by the scripts as jobs
move; these tests check that the lists follow every transition and find old jobs behind many
newer ones.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis_server import RedisServer

from conveyor import Queue
from conveyor.backends.base import Ack, Lease
from conveyor.model import ErrorInfo

pytestmark = pytest.mark.timeout(120)

ERROR: ErrorInfo = {"type": "RuntimeError", "message": "boom", "traceback": ""}


@pytest.fixture
async def queue(redis_server: RedisServer) -> AsyncIterator[Queue]:
    """A queue with an ``echo`` task on its own key prefix of the session's redis-server."""
    q = Queue(redis_server.url(prefix=f"lists-{uuid.uuid4().hex[:8]}"))

    @q.task(name="echo")
    async def echo(x: int) -> int:
        return x

    async with q:
        yield q


async def _ids(queue: Queue, **kw: Any) -> list[str]:
    return [r.id for r in await queue.list_jobs(**kw)]


async def test_each_status_lists_its_jobs_newest_first_through_every_transition(
    queue: Queue,
) -> None:
    """Lists by status follow claim, complete, fail, dead, cancel, retry; pages by offset."""
    echo = queue.tasks["echo"]
    b = queue.backend
    jobs = [await echo.enqueue(i) for i in range(7)]
    later = await echo.options(delay=3600).enqueue(9)
    ids = [j.id for j in jobs]
    claimed = await b.claim([queue.name], "w1", 4, 30.0)
    assert [r.id for r in claimed] == ids[:4]
    t = {r.id: r.lease_token or "" for r in claimed}
    assert await b.complete([Ack(ids[0], t[ids[0]], 0)]) == [True]
    assert await b.fail(Lease(ids[1], t[ids[1]]), ERROR, retry_at=None)
    assert await b.fail(Lease(ids[2], t[ids[2]]), ERROR, retry_at=None, dead=True)
    await jobs[4].cancel()

    assert await _ids(queue, status="succeeded") == [ids[0]]
    assert await _ids(queue, status="failed") == [ids[1]]
    assert await _ids(queue, status="dead") == [ids[2]]
    assert await _ids(queue, status="running") == [ids[3]]
    assert await _ids(queue, status="cancelled") == [ids[4]]
    assert await _ids(queue, status="queued") == [ids[6], ids[5]]
    assert await _ids(queue, status="scheduled") == [later.id]
    everything = [later.id, *reversed(ids)]
    assert await _ids(queue) == everything
    assert await _ids(queue, limit=3, offset=2) == everything[2:5]
    assert await _ids(queue, status="queued", limit=1, offset=1) == [ids[5]]
    assert await _ids(queue, task="echo", limit=2) == everything[:2]

    await jobs[1].retry()  # by hand: back to queued, newest of the queue now
    assert await _ids(queue, status="failed") == []
    assert await _ids(queue, status="queued") == [ids[1], ids[6], ids[5]]
    assert await _ids(queue) == [ids[1], *everything[:6], ids[0]]


async def test_an_old_queued_job_is_listed_behind_fifty_thousand_finished_ones(
    queue: Queue,
) -> None:
    """list_jobs(status="queued") finds a job that 51,000 newer finished jobs came after."""
    echo = queue.tasks["echo"]
    b = queue.backend
    old = await echo.options(priority=-1).enqueue(0)  # claimed after everything else
    for _ in range(3):
        await queue.enqueue_many([echo.prepare(1) for _ in range(17_000)])
        claimed = await b.claim([queue.name], "w1", 17_000, 60.0)
        assert old.id not in {r.id for r in claimed}
        await b.complete([Ack(r.id, r.lease_token or "", 1) for r in claimed])
    assert await _ids(queue, status="queued") == [old.id]
    assert len(await _ids(queue, status="succeeded", limit=50)) == 50


async def test_a_store_from_before_the_listing_indexes_is_moved_onto_them_on_open(
    queue: Queue, redis_server: RedisServer
) -> None:
    """Jobs listed only in the old per-queue index (``P:q:Q:all``) are listed by status after open."""
    import redis as redis_sync

    echo = queue.tasks["echo"]
    b = queue.backend
    jobs = [await echo.enqueue(i) for i in range(2500)]  # more than one upgrade batch
    (running,) = await b.claim(["default"], "w", 1, 30.0)
    prefix = b.prefix  # type: ignore[attr-defined]
    raw = redis_sync.Redis(port=redis_server.port, decode_responses=True)
    # turn the store back into the old layout: one index of every job by seq, none by status
    old = f"{prefix}:q:default:all"
    for key in raw.scan_iter(f"{prefix}:q:default:in-*"):
        for member, seq in raw.zrange(key, 0, -1, withscores=True):
            raw.zadd(old, {member: seq})
        raw.delete(key)
    assert await queue.list_jobs(status="queued") == []
    await queue.close()
    later = Queue(queue.url)
    later.task(name="echo")(lambda x: x)
    async with later:
        queued = [r.id for r in await later.list_jobs(status="queued", limit=500)]
        assert queued == [j.id for j in reversed(jobs) if j.id != running.id][:500]
        assert [r.id for r in await later.list_jobs(status="running")] == [running.id]
        assert raw.exists(old) == 0
