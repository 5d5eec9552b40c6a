"""Ordered updates: a game-stats endpoint hit rapidly, each match's updates stored in order.

A game client pushes stats many times a second. With ``BackgroundTasks`` every update runs at once,
so a slow write can finish after a newer one and old data overwrites new. Here each update is a job
with ``key="match:{match_id}"``: the updates of one match are stored one at a time, in the order
they arrived, while other matches proceed in parallel. ``supersede=True`` drops an update that is
still waiting when a newer one for the same match arrives: only the latest state matters.

Run it (jobs on the SQLite file ``./conveyor.db``, or ``$CONVEYOR_URL``)::

    uvicorn game_stats:app --app-dir examples
    curl -X POST localhost:8000/matches/1/stats -H 'content-type: application/json' \\
         -d '{"seq": 1, "stats": {"goals": 2}}'
    curl localhost:8000/matches/1          # what was stored, in which order
    open http://localhost:8000/jobs/ui      # the dashboard
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field

from conveyor import Queue

#: how long one write takes, in seconds (a slow database)
WRITE_SECONDS = float(os.environ.get("STATS_WRITE_SECONDS", "0.05"))

queue = Queue()


class StatsStore:
    """Stands in for the database: the latest stats per match, and a log of every write."""

    def __init__(self) -> None:
        self.current: dict[int, dict[str, Any]] = {}
        self.writes: dict[int, list[dict[str, Any]]] = {}

    async def write(self, match_id: int, seq: int, stats: dict[str, int]) -> None:
        """Store ``stats`` as the match's latest; slow on purpose."""
        started = time.time()
        await asyncio.sleep(WRITE_SECONDS)
        self.current[match_id] = {"seq": seq, "stats": stats}
        self.writes.setdefault(match_id, []).append(
            {"seq": seq, "started": started, "finished": time.time()}
        )


store = StatsStore()


def get_store() -> StatsStore:
    """The store, as a dependency: endpoints and tasks declare it the same way."""
    return store


@queue.task(key="match:{match_id}", supersede=True)
async def save_stats(
    match_id: int, seq: int, stats: dict[str, int],
    db: StatsStore = Depends(get_store),  # noqa: B008 - a default keeps enqueue(...) type-correct
) -> int:
    """Store one update of a match. Runs one at a time per match, in arrival order."""
    await db.write(match_id, seq, stats)
    return seq


app = FastAPI(title="game stats", lifespan=queue.lifespan(worker=True, concurrency=20))
# a local demo, open on purpose: guard a real one with dependencies=[...] (docs/fastapi.md)
app.include_router(queue.router(dashboard=True, public=True), prefix="/jobs")


class StatsUpdate(BaseModel):
    """One push from the game client."""

    seq: int = Field(ge=0, description="the client's sequence number, for checking")
    stats: dict[str, int]


@app.post("/matches/{match_id}/stats", status_code=202)
async def push_stats(match_id: int, update: StatsUpdate) -> dict[str, str]:
    """Accept an update at once; it is stored in order by the worker."""
    job = await save_stats.enqueue(match_id, update.seq, update.stats)
    return {"job": job.id}


@app.get("/matches/{match_id}")
async def match(match_id: int, db: Annotated[StatsStore, Depends(get_store)]) -> dict[str, Any]:
    """The stored stats of a match and the log of its writes, in the order they happened."""
    if match_id not in db.current:
        raise HTTPException(404, f"no stats stored for match {match_id} yet")
    return {"match_id": match_id, **db.current[match_id], "writes": db.writes[match_id]}


@app.get("/health")
async def health() -> dict[str, bool]:
    """Liveness."""
    return {"ok": True}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, timeout_graceful_shutdown=5)
