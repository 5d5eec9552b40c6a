"""The SQLite schema grows in place: a database made by an older conveyor opens and works."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from conveyor import Context, Queue
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.backends.sqlite.schema import VERSION
from conveyor.errors import BackendError
from conveyor.model import JobStatus

# what conveyor created before schema versions (version 1), as it was
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS conveyor_jobs (
    id TEXT PRIMARY KEY,
    pos INTEGER NOT NULL,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    key TEXT,
    unique_key TEXT,
    blocked INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    timeout REAL,
    enqueued_at REAL NOT NULL,
    scheduled_for REAL,
    run_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    progress TEXT,
    retry TEXT,
    worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_expires_at REAL,
    last_event INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS conveyor_jobs_claim
    ON conveyor_jobs (queue, priority DESC, pos)
    WHERE status IN ('queued', 'scheduled') AND blocked = 0;
CREATE INDEX IF NOT EXISTS conveyor_jobs_lane
    ON conveyor_jobs (queue, key, pos)
    WHERE key IS NOT NULL AND status IN ('queued', 'scheduled', 'running');
CREATE UNIQUE INDEX IF NOT EXISTS conveyor_jobs_unique
    ON conveyor_jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'scheduled', 'running');
CREATE INDEX IF NOT EXISTS conveyor_jobs_running
    ON conveyor_jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS conveyor_jobs_pos ON conveyor_jobs (pos);
CREATE INDEX IF NOT EXISTS conveyor_jobs_finished
    ON conveyor_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS conveyor_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conveyor_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO conveyor_meta VALUES ('pos', 0);
"""


async def test_a_database_without_newer_columns_gets_them_on_open(tmp_path: Path) -> None:
    """Opening adds missing columns (here `lost`) and jobs stored before stay usable."""
    db = tmp_path / "old.db"
    queue = Queue(f"sqlite:///{db}")

    @queue.task(name="echo")
    async def echo(x: int) -> int:
        return x

    async with queue:
        job = await echo.enqueue(7)
    with sqlite3.connect(db) as conn:  # what a database from before the column looks like
        conn.execute("ALTER TABLE conveyor_jobs DROP COLUMN lost")
        assert "lost" not in {r[1] for r in conn.execute("PRAGMA table_info(conveyor_jobs)")}

    again = Queue(f"sqlite:///{db}")
    again.task(name="echo")(echo.fn)
    async with again, again.worker(concurrency=1):
        assert await again.job(job.id).result(timeout=10) == 7
    with sqlite3.connect(db) as conn:
        assert "lost" in {r[1] for r in conn.execute("PRAGMA table_info(conveyor_jobs)")}


async def test_a_database_from_before_meta_gets_the_column_and_its_jobs_run_without_meta(
    tmp_path: Path,
) -> None:
    """A database of the current version made before job meta existed: opening adds the column
    (the version stays), its waiting jobs run with an empty ctx.meta, new jobs store theirs."""
    db = tmp_path / "before-meta.db"
    queue = Queue(f"sqlite:///{db}")

    @queue.task(name="meta")
    async def meta(ctx: Context) -> dict[str, str]:
        return dict(ctx.meta)

    async with queue:
        old = await meta.enqueue()
    with sqlite3.connect(db) as conn:  # the database as the release before meta left it
        conn.execute("ALTER TABLE conveyor_jobs DROP COLUMN meta")

    again = Queue(f"sqlite:///{db}")
    again.task(name="meta")(meta.fn)
    async with again:
        new = await again.tasks["meta"].options(meta={"tenant": "t"}).enqueue()
        async with again.worker(concurrency=1):
            assert await again.job(old.id).result(timeout=10) == {}
            assert await again.job(new.id).result(timeout=10) == {"tenant": "t"}
    with sqlite3.connect(db) as conn:
        assert "meta" in {r[1] for r in conn.execute("PRAGMA table_info(conveyor_jobs)")}
        version = conn.execute("SELECT value FROM conveyor_meta WHERE name = 'schema'").fetchone()
        assert version == (VERSION,)


def _v1_database(path: Path) -> dict[str, str]:
    """A database made by version 1, holding jobs in each state a claim must tell apart."""
    now = time.time()
    rows = {  # name: (status, run_at, finished_at)
        "done": ("succeeded", now - 60, now - 30),
        "failed": ("failed", now - 60, now - 30),
        "later": ("scheduled", now + 3600, None),
        "due": ("scheduled", now - 5, None),
        "queued": ("queued", now - 1, None),
    }
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    for pos, (name, (status, run_at, finished_at)) in enumerate(rows.items(), start=1):
        conn.execute(
            "INSERT INTO conveyor_jobs (id, pos, task, queue, status, args, kwargs, enqueued_at, "
            "run_at, finished_at, last_event) VALUES (?, ?, 'echo', 'default', ?, '[]', '{}', ?, ?, ?, 1)",
            (name, pos, status, now - 60, run_at, finished_at),
        )
        conn.execute(
            "INSERT INTO conveyor_events VALUES (?, 1, 'status', ?, ?)",
            (name, now - 60, f'{{"status":"{status}","attempt":0}}'),
        )
    conn.execute("UPDATE conveyor_meta SET value = ? WHERE name = 'pos'", (len(rows),))
    conn.commit()
    conn.close()
    return {name: status for name, (status, _, _) in rows.items()}


async def test_a_version_1_database_is_upgraded_once_by_processes_opening_it_together(
    tmp_path: Path,
) -> None:
    """Several backends opening an old database at once upgrade it once: counts are right, the
    old claim index is gone, and its jobs are claimed as before (due ones in order, later ones not)."""
    db = tmp_path / "v1.db"
    statuses = _v1_database(db)
    backends = [SQLiteBackend(f"sqlite:///{db}") for _ in range(4)]
    await asyncio.gather(*(b.open() for b in backends))
    try:
        conn = sqlite3.connect(db)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        version = conn.execute("SELECT value FROM conveyor_meta WHERE name = 'schema'").fetchone()
        conn.close()
        assert version == (VERSION,)
        assert "conveyor_jobs_claim" not in indexes and "conveyor_jobs_ready" in indexes
        expected = {status.value: 0 for status in JobStatus}
        for status in statuses.values():
            expected[status] += 1
        assert await backends[1].stats() == expected
        claimed = await backends[2].claim(["default"], "w", 10, 60)
        assert [j.id for j in claimed] == ["due", "queued"]
        assert (await backends[3].stats("default"))["running"] == 2
        later = await backends[0].get("later")
        assert later is not None and later.status is JobStatus.SCHEDULED
    finally:
        await asyncio.gather(*(b.close() for b in backends))


async def test_a_database_from_a_newer_conveyor_is_refused(tmp_path: Path) -> None:
    """Opening a database whose schema version is newer than this code raises BackendError."""
    db = tmp_path / "new.db"
    backend = SQLiteBackend(f"sqlite:///{db}")
    await backend.open()
    await backend.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE conveyor_meta SET value = ? WHERE name = 'schema'", (VERSION + 1,))
    again = SQLiteBackend(f"sqlite:///{db}")
    with pytest.raises(BackendError, match="newer conveyor"):
        await again.open()


async def test_code_of_version_1_cannot_open_an_upgraded_database(tmp_path: Path) -> None:
    """Version 1's schema script fails on an upgraded database, so old code cannot write to it."""
    db = tmp_path / "v1.db"
    _v1_database(db)
    backend = SQLiteBackend(f"sqlite:///{db}")
    await backend.open()
    await backend.close()
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.OperationalError, match="already a table"):
            conn.executescript(SCHEMA_V1)  # what version 1 runs on every open
    finally:
        conn.close()
