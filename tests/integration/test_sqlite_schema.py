"""The SQLite schema grows in place: a database made by an older conveyor opens and works."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conveyor import Queue


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
