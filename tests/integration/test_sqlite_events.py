"""SQLite numbers each job's events as it writes them, within one enqueue batch too."""

from __future__ import annotations

from pathlib import Path

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.model import JobRecord, new_id


async def test_a_job_superseded_in_its_own_batch_was_queued_first(tmp_path: Path) -> None:
    """A job cancelled by a superseding job of the same enqueue batch has events queued then
    cancelled (superseded), as on the memory backend."""
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'events.db'}")
    await backend.open()
    try:
        first = JobRecord(id=new_id(), task="t", queue="q", key="k")
        second = JobRecord(id=new_id(), task="t", queue="q", key="k", supersede=True)
        await backend.enqueue([first, second])
        events = await backend.events(first.id)
        assert [(e.seq, e.data["status"], e.data.get("reason")) for e in events] == [
            (1, "queued", None), (2, "cancelled", "superseded"),
        ]
    finally:
        await backend.close()
