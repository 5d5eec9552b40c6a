"""PostgreSQL at its edges: LISTEN that comes back, migrations, the schema option, poll mode,
enqueue inside an open transaction, and the batch limit.

Every test runs on the session's throwaway database (``postgres_database`` in conftest), in a
schema of its own; none of them stops or restarts the server (see tests/chaos for that).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from postgres_server import ThrowawayDatabase

from conveyor import Queue
from conveyor.backends.base import Ack
from conveyor.backends.postgres import PostgresBackend, enqueue_on
from conveyor.backends.postgres.schema import VERSION
from conveyor.backends.postgres.transitions import MAX_ENQUEUE_JOBS
from conveyor.errors import BackendError, ConfigError, PayloadTooLarge
from conveyor.model import JobRecord, new_id

pytestmark = pytest.mark.timeout(60)


def _backend(queue: Queue) -> PostgresBackend:
    backend = queue.backend
    assert isinstance(backend, PostgresBackend)
    return backend


def _echo_queue(url: str) -> Queue:
    q = Queue(url)

    @q.task(name="echo")
    async def echo(x: int) -> int:
        return x

    return q


@pytest.fixture
async def queue(postgres_database: ThrowawayDatabase) -> AsyncIterator[Queue]:
    """A queue with an ``echo`` task; idle workers fall back to a 30 s poll (push must wake them)."""
    q = _echo_queue(postgres_database.schema_url(poll="30"))
    async with q:
        yield q


async def _server(database: ThrowawayDatabase) -> asyncpg.Connection:
    return await asyncpg.connect(database.url)


async def test_a_worker_is_woken_again_after_its_listen_connection_is_terminated(
    queue: Queue, postgres_database: ThrowawayDatabase, wait_until: Any
) -> None:
    """pg_terminate_backend on the listener: it reconnects, and a new job wakes the idle worker."""
    backend = _backend(queue)
    echo = queue.tasks["echo"]
    async with queue.worker(concurrency=2):
        first = await echo.enqueue(1)
        assert await first.result(timeout=5) == 1
        listener = backend._listener
        assert listener is not None and listener.server_pid is not None
        old_pid = listener.server_pid
        admin = await _server(postgres_database)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        finally:
            await admin.close()
        await wait_until(
            lambda: listener.healthy and listener.server_pid not in (None, old_pid), timeout=10,
            message="the listener reconnected",
        )
        # the worker sleeps on a 30 s poll now: only a NOTIFY can wake it this soon
        started = time.monotonic()
        second = await echo.enqueue(2)
        assert await second.result(timeout=5) == 2
        assert time.monotonic() - started < 3


async def test_waiters_poll_while_the_listener_is_down(
    postgres_database: ThrowawayDatabase, wait_until: Any
) -> None:
    """With the listener gone (and not back), an idle worker still finds new jobs by polling."""
    q = _echo_queue(postgres_database.schema_url(poll="0.2"))
    async with q:
        backend = _backend(q)
        listener = backend._listener
        assert listener is not None
        await listener.stop()  # as if it could not reconnect
        assert not backend.pushing
        async with q.worker(concurrency=1):
            job = await q.tasks["echo"].enqueue(3)
            assert await job.result(timeout=5) == 3


async def test_poll_only_mode_runs_jobs_without_listen(
    postgres_database: ThrowawayDatabase,
) -> None:
    """listen=false: no LISTEN connection, no cancel push; workers poll and still run jobs."""
    q = _echo_queue(postgres_database.schema_url(listen="false", poll="0.05"))
    async with q:
        backend = _backend(q)
        assert backend._listener is None
        assert await backend.watch_cancellations(lambda _: None) is None
        assert backend.db._connect_kwargs["statement_cache_size"] == 0
        async with q.worker(concurrency=1):
            job = await q.tasks["echo"].enqueue(4)
            assert await job.result(timeout=5) == 4


async def test_migrate_is_idempotent_and_keeps_a_version_table(
    postgres_database: ThrowawayDatabase,
) -> None:
    """The first migrate creates the schema at VERSION; the next one finds nothing to do."""
    backend = PostgresBackend(postgres_database.schema_url(schema="mig_once"))
    assert await backend.migrate() == (0, VERSION)
    assert await backend.migrate() == (VERSION, VERSION)
    await backend.open()  # opening a migrated schema migrates nothing
    await backend.close()
    admin = await _server(postgres_database)
    try:
        rows = await admin.fetch("SELECT version FROM mig_once.migrations")
    finally:
        await admin.close()
    assert [r["version"] for r in rows] == list(range(1, VERSION + 1))


async def test_many_workers_opening_a_fresh_schema_at_once_all_succeed(
    postgres_database: ThrowawayDatabase,
) -> None:
    """Twelve backends open one fresh schema at the same moment: one creates it, all work."""
    url = postgres_database.schema_url(schema="mig_many", listen="false")
    queues = [_echo_queue(url) for _ in range(12)]
    try:
        await asyncio.gather(*(q.open() for q in queues))
        jobs = await asyncio.gather(*(q.tasks["echo"].enqueue(i) for i, q in enumerate(queues)))
        assert (await queues[0].stats())["queued"] == len(jobs)
    finally:
        await asyncio.gather(*(q.close() for q in queues))


async def test_a_schema_from_a_newer_conveyor_is_refused(
    postgres_database: ThrowawayDatabase,
) -> None:
    """A version table that says VERSION + 1 makes open() fail with BackendError, writing nothing."""
    backend = PostgresBackend(postgres_database.schema_url(schema="mig_newer"))
    await backend.migrate()
    admin = await _server(postgres_database)
    try:
        await admin.execute("INSERT INTO mig_newer.migrations (version) VALUES ($1)", VERSION + 1)
    finally:
        await admin.close()
    with pytest.raises(BackendError, match="newer conveyor"):
        await backend.migrate()
    with pytest.raises(BackendError, match="newer conveyor"):
        await PostgresBackend(postgres_database.schema_url(schema="mig_newer")).open()


def test_the_cli_migrates_a_url(postgres_database: ThrowawayDatabase) -> None:
    """`conveyor migrate URL` creates the schema, and says there is nothing to do the second time."""
    url = postgres_database.schema_url(schema="mig_cli")
    run = [sys.executable, "-m", "conveyor", "migrate", url]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True)
    assert f"from version 0 to {VERSION}" in first.stdout
    second = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True)
    assert "nothing to do" in second.stdout


async def test_schemas_of_one_database_are_separate_stores(
    postgres_database: ThrowawayDatabase,
) -> None:
    """Two schemas in one database: each sees only its own jobs, and wakes only its own workers."""
    a = _echo_queue(postgres_database.schema_url(schema="iso_a"))
    b = _echo_queue(postgres_database.schema_url(schema="iso_b"))
    async with a, b:
        job = await a.tasks["echo"].enqueue(1)
        assert (await b.stats())["queued"] == 0
        assert await _backend(b).get(job.id) is None
        assert (await a.stats())["queued"] == 1


@pytest.mark.parametrize("schema", ["", "Upper", "1st", "has-dash", "x" * 49, 'q"uote'])
def test_a_bad_schema_name_is_a_config_error(schema: str) -> None:
    """The schema option takes 1 to 48 lowercase letters, digits and underscores."""
    with pytest.raises(ConfigError, match="schema"):
        PostgresBackend(f"postgresql://localhost/db?schema={schema}")


@pytest.mark.parametrize(
    "option", ["listen=maybe", "poll=0", "poll=x", "pool_max=0", "pool_min=5&pool_max=2"]
)
def test_a_bad_url_option_is_a_config_error(option: str) -> None:
    """listen, poll and the pool sizes are checked when the backend is made."""
    with pytest.raises(ConfigError):
        PostgresBackend(f"postgresql://localhost/db?{option}")


async def test_enqueue_on_an_open_transaction_is_stored_only_if_it_commits(
    queue: Queue, postgres_database: ThrowawayDatabase
) -> None:
    """enqueue_on a caller's transaction: a rollback leaves nothing; a commit stores the job."""
    backend = _backend(queue)
    conn = await _server(postgres_database)

    async def fetch(sql: str, params: Any) -> Any:
        return await conn.fetch(sql, *params)

    try:
        gone = JobRecord(id=new_id(), task="echo", args=[1])
        tx = conn.transaction()
        await tx.start()
        (stored,) = await enqueue_on(fetch, backend.schema, [gone])
        assert stored.status == "queued"
        assert await backend.get(gone.id) is None  # not visible before the commit
        await tx.rollback()
        assert await backend.get(gone.id) is None
        kept = JobRecord(id=new_id(), task="echo", args=[2])
        async with conn.transaction():
            await enqueue_on(fetch, backend.schema, [kept])
        rec = await backend.get(kept.id)
        assert rec is not None and rec.status == "queued"
    finally:
        await conn.close()


async def test_more_than_max_enqueue_jobs_in_one_call_is_refused(queue: Queue) -> None:
    """One past MAX_ENQUEUE_JOBS in one enqueue raises PayloadTooLarge; nothing is written."""
    echo = queue.tasks["echo"]
    with pytest.raises(PayloadTooLarge, match="split the batch"):
        await queue.enqueue_many([echo.prepare(i) for i in range(MAX_ENQUEUE_JOBS + 1)])
    assert (await queue.stats())["queued"] == 0


async def test_a_repeatable_read_enqueue_to_a_lane_that_moved_on_fails_instead_of_sticking(
    queue: Queue, postgres_database: ThrowawayDatabase
) -> None:
    """REPEATABLE READ: the lane's head finished after the snapshot, so enqueue_on to that lane
    raises a serialization failure (retry the transaction) rather than store a job blocked forever."""
    backend = _backend(queue)
    await queue.tasks["echo"].options(key="k").enqueue(1)
    (head,) = await backend.claim(["default"], "w", 1, 30.0)
    assert head.lease_token is not None
    conn = await _server(postgres_database)

    async def fetch(sql: str, params: Any) -> Any:
        return await conn.fetch(sql, *params)

    try:
        tx = conn.transaction(isolation="repeatable_read")
        await tx.start()
        # the snapshot is taken here: the lane's head is running
        await conn.fetchval(f"SELECT status FROM {backend.s}.jobs WHERE id = $1", head.id)
        assert await backend.complete([Ack(head.id, head.lease_token, 1)]) == [True]
        with pytest.raises(asyncpg.SerializationError):
            await enqueue_on(fetch, backend.schema, [JobRecord(id=new_id(), task="echo", key="k")])
        await tx.rollback()
        # the same enqueue, retried in a fresh transaction, finds the lane free
        async with conn.transaction(isolation="repeatable_read"):
            (stored,) = await enqueue_on(
                fetch, backend.schema, [JobRecord(id=new_id(), task="echo", key="k")]
            )
        (again,) = await backend.claim(["default"], "w", 1, 30.0)
        assert again.id == stored.id
    finally:
        await conn.close()
