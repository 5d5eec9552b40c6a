"""Transactional enqueue (``connection=``): the job is stored, and workers woken, iff the caller's
transaction commits; for every connection kind conveyor speaks, and refused for any other.

Each test writes an application row and a job in one transaction on the session's throwaway
database, in a schema of its own. Workers poll every 30 s only, so a job run within seconds was
woken by the NOTIFY delivered at commit. A LISTEN of our own sees every wake-up: a rolled-back
transaction sends none (a marker notified after it arrives first).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import pytest
from postgres_server import ThrowawayDatabase
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from conveyor import Queue, Task
from conveyor.backends.postgres import PostgresBackend
from conveyor.backends.postgres.schema import channels
from conveyor.errors import ConfigError, OptionError

pytestmark = pytest.mark.timeout(60)

KINDS = [
    "asyncpg", "psycopg", "sqlalchemy-session-asyncpg", "sqlalchemy-session-psycopg",
    "sqlalchemy-connection-asyncpg", "sqlalchemy-connection-psycopg",
]


@dataclass
class Tx:
    """An open transaction of one connection kind: ``run`` a statement, then ``end`` it."""

    connection: object
    run: Callable[[str], Awaitable[Any]]
    end: Callable[[bool], Awaitable[None]]  # True: commit, False: roll back


@asynccontextmanager
async def _transaction(kind: str, url: str) -> AsyncIterator[Tx]:
    """An open transaction on a new connection of ``kind`` to ``url``; closed after."""
    if kind == "asyncpg":
        raw = await asyncpg.connect(url)
        tr = raw.transaction()
        await tr.start()
        try:
            yield Tx(raw, raw.execute, lambda ok: tr.commit() if ok else tr.rollback())
        finally:
            await raw.close()
    elif kind == "psycopg":
        pg = await psycopg.AsyncConnection.connect(url)
        try:
            async with pg.transaction(force_rollback=False) as ptx:
                async def end(ok: bool) -> None:
                    if not ok:
                        raise psycopg.Rollback(ptx)

                yield Tx(pg, pg.execute, end)
        finally:
            await pg.close()
    else:
        _, what, driver = kind.split("-")
        engine = create_async_engine(url.replace("postgresql://", f"postgresql+{driver}://"))
        try:
            if what == "session":
                async with AsyncSession(engine) as session:
                    await session.begin()
                    yield Tx(
                        session, lambda sql: session.execute(text(sql)),
                        lambda ok: session.commit() if ok else session.rollback(),
                    )
            else:
                async with engine.connect() as conn:
                    await conn.begin()
                    yield Tx(
                        conn, lambda sql: conn.execute(text(sql)),
                        lambda ok: conn.commit() if ok else conn.rollback(),
                    )
        finally:
            await engine.dispose()


class Wakeups:
    """Every ``<schema>.wake`` notification, on a LISTEN connection of the test's own."""

    def __init__(self, conn: asyncpg.Connection, channel: str) -> None:
        self.conn, self.channel = conn, channel
        self.seen: list[str] = []
        self.changed = asyncio.Event()

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.seen.append(str(payload))
        self.changed.set()

    async def until(self, payload: str) -> list[str]:
        """Notify ``payload`` in a transaction of its own; return what arrived before it."""
        await self.conn.execute("SELECT pg_notify($1, $2)", self.channel, payload)
        async with asyncio.timeout(5):
            while payload not in self.seen:
                self.changed.clear()
                await self.changed.wait()
        before = self.seen[: self.seen.index(payload)]
        self.seen.clear()
        return before


@pytest.fixture
async def queue(postgres_database: ThrowawayDatabase) -> AsyncIterator[Queue]:
    """A PostgreSQL queue with a ``welcome`` task; idle workers poll only every 30 s."""
    q = Queue(postgres_database.schema_url(poll="30"))

    @q.task(name="welcome")
    async def welcome(user: str) -> str:
        return f"hello {user}"

    async with q:
        yield q


@pytest.fixture
async def wakeups(queue: Queue, postgres_database: ThrowawayDatabase) -> AsyncIterator[Wakeups]:
    """The queue's wake-ups as they are delivered."""
    backend = queue.backend
    assert isinstance(backend, PostgresBackend)
    conn = await asyncpg.connect(postgres_database.url)
    seen = Wakeups(conn, channels(backend.schema)[0])
    await conn.add_listener(seen.channel, seen)
    try:
        yield seen
    finally:
        await conn.close()


@pytest.fixture
async def users(postgres_database: ThrowawayDatabase) -> AsyncIterator[str]:
    """An application table of this test's own, ``name`` unique."""
    table = f"users_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres_database.url)
    try:
        await conn.execute(f"CREATE TABLE {table} (name text PRIMARY KEY)")
        yield table
    finally:
        await conn.close()


async def _stored(queue: Queue) -> int:
    return sum((await queue.stats()).values())


@pytest.mark.parametrize("kind", KINDS)
async def test_a_job_is_stored_and_woken_for_only_when_the_callers_transaction_commits(
    kind: str, queue: Queue, wakeups: Wakeups, users: str, postgres_database: ThrowawayDatabase
) -> None:
    """Rolled back: no job and no wake-up. Committed: one job, unseen before, run at once."""
    welcome: Task[[str], str] = queue.tasks["welcome"]
    async with queue.worker(concurrency=1):
        async with _transaction(kind, postgres_database.url) as tx:
            # the job first: the transaction's first statement (SQLAlchemy begins it lazily)
            await welcome.options(connection=tx.connection).enqueue("ann")
            await tx.run(f"INSERT INTO {users} VALUES ('ann')")
            await tx.end(False)
        assert await wakeups.until("after-rollback") == []
        assert await _stored(queue) == 0

        async with _transaction(kind, postgres_database.url) as tx:
            await tx.run(f"INSERT INTO {users} VALUES ('bob')")
            job = await welcome.options(connection=tx.connection).enqueue("bob")
            assert await queue.backend.get(job.id) is None  # not visible before the commit
            await tx.end(True)
        assert await job.result(timeout=5) == "hello bob"  # woken by the commit's NOTIFY
    assert await wakeups.until("after-commit") == [queue.name]
    assert await _stored(queue) == 1


async def test_enqueue_many_writes_a_batch_in_the_callers_transaction(
    queue: Queue, postgres_database: ThrowawayDatabase
) -> None:
    """enqueue_many(connection=) stores the batch on commit, none on rollback; prepare refuses it."""
    welcome = queue.tasks["welcome"]
    pool = await asyncpg.create_pool(postgres_database.url, min_size=1, max_size=1)
    try:
        for commit in (False, True):
            async with pool.acquire() as conn:  # a pool's connection (a proxy) works too
                tr = conn.transaction()
                await tr.start()
                jobs = await queue.enqueue_many(
                    [welcome.prepare(n) for n in ("a", "b", "c")], connection=conn
                )
                await (tr.commit() if commit else tr.rollback())
            assert await _stored(queue) == (3 if commit else 0)
    finally:
        await pool.close()
    assert [r.id for r in reversed(await queue.list_jobs())] == [j.id for j in jobs]
    with pytest.raises(OptionError, match="enqueue_many"):  # never silently dropped
        welcome.options(connection=object()).prepare("d")


async def test_connections_of_another_kind_or_without_an_open_transaction_are_refused(
    queue: Queue, postgres_database: ThrowawayDatabase
) -> None:
    """A ConfigError, before anything is written: other kinds, no open transaction, an engine."""
    welcome = queue.tasks["welcome"]
    url = postgres_database.url

    async def refused(connection: object, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            await welcome.options(connection=connection).enqueue("x")
        with pytest.raises(ConfigError, match=match):
            await queue.enqueue_many([], connection=connection)

    await refused(object(), "connection= takes")
    raw = await asyncpg.connect(url)
    try:
        await refused(raw, "no open transaction")
    finally:
        await raw.close()
    await refused(raw, "no open transaction")  # closed
    pool = await asyncpg.create_pool(url, min_size=0, max_size=1)
    try:
        await refused(pool, "connection= takes")  # a pool: acquire a connection of it first
    finally:
        await pool.close()
    async with await psycopg.AsyncConnection.connect(url) as pg:
        await refused(pg, "no open transaction")  # idle: nothing begun yet
        await pg.set_autocommit(True)
        await pg.execute("SELECT 1")
        await refused(pg, "no open transaction")
    with psycopg.Connection.connect(url) as sync_pg:
        sync_pg.execute("SELECT 1")
        await refused(sync_pg, "psycopg AsyncConnection")
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        await refused(engine, "connection= takes")
        async with AsyncSession(engine) as session:
            await refused(session, "no open transaction")
            await refused(session.sync_session, "connection= takes")
        async with engine.connect() as conn:
            await refused(conn, "no open transaction")
    finally:
        await engine.dispose()
    assert await _stored(queue) == 0


async def test_connection_on_a_queue_outside_postgresql_is_refused(
    postgres_database: ThrowawayDatabase,
) -> None:
    """connection= on a memory queue raises ConfigError naming PostgreSQL; nothing is stored."""
    q = Queue("memory://")

    @q.task(name="welcome")
    async def welcome(user: str) -> str:
        return user

    raw = await asyncpg.connect(postgres_database.url)
    try:
        async with raw.transaction(), q:
            with pytest.raises(ConfigError, match="PostgreSQL"):
                await welcome.options(connection=raw).enqueue("x")
            assert await q.stats() == {s: 0 for s in await q.stats()}
    finally:
        await raw.close()
