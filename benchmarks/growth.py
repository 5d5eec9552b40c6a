"""Does the store stay fast as it grows? The same figures on an empty store and on a grown one.

``measure_growth`` (the ``growth`` measurement of ``run.py``) takes one fresh store and:

1. sets up a small *live set* (1,000 queued and 100 running jobs: what a busy dashboard shows, and
   a page of 50 succeeded, failed, dead and cancelled jobs, so every list call returns a full page)
   and measures claim, enqueue, ``stats()`` and the dashboard's list calls on that small store;
2. takes the live set down and *grows* the store through the backend itself: ``N`` finished jobs
   (``enqueue`` in batches of 1,000, then ``claim`` and ``complete`` them; a few end failed, dead or
   cancelled) and ``N / 10`` delayed jobs, timing it and noting the bytes each finished job costs;
3. sets the live set up again and measures the same figures on the grown store;
4. purges the oldest ``N / 10`` finished jobs while a probe in another process writes in a tight
   loop, and reports the longest time the probe was kept from writing.

Only the public :class:`~conveyor.backends.base.Backend` contract is used (the backends' tables and
keys may change under it); the probe and the size figures look at the store from outside.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any
from urllib.parse import urlsplit

from benchmarks.bench_app import make_queue
from benchmarks.pg_growth import is_postgres
from benchmarks.pg_growth import probe as pg_probe
from benchmarks.pg_growth import store_bytes as pg_store_bytes
from conveyor import Queue
from conveyor.backends.base import Ack, Backend, Lease
from conveyor.model import ErrorInfo, JobRecord, JobStatus, new_id, utcnow

SEED_BATCH = 1_000  # jobs per enqueue / claim / complete while seeding (Redis scripts chunk at ~4k)
SEEDERS = 2
LIVE_QUEUED = 1_000
LIVE_RUNNING = 100
CLAIM_BATCH = 100
LEASE = 600.0  # seconds: nothing the benchmark holds may expire while it measures
LISTED: list[str | None] = ["failed", "dead", "running", "queued", "succeeded", None]
#: rows per list call, and finished jobs of each status in the small store (a full page)
LIST_PAGE = 50

#: the figures compared between the empty and the grown store: name -> what is timed
FIGURES = ["claim", "enqueue", "stats", *(f"list_{s or 'all'}" for s in LISTED)]
RATIO_GOAL = 1.5
PURGE_HOLD_GOAL_MS = 50.0


def _ms(samples: list[float], prefix: str) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 1 else samples * 99
    return {f"{prefix}_p50_ms": statistics.median(samples) * 1000, f"{prefix}_p99_ms": cuts[98] * 1000}


async def _timed(times: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(times):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


# -- the live set: what is queued and running while the figures are taken --------------------------
class Live:
    """1,000 queued and 100 running jobs, kept at that size while claims are measured."""

    def __init__(self, queue: Queue, template: JobRecord) -> None:
        self.queue, self.template = queue, template
        self.backend: Backend = queue.backend
        self.running: list[JobRecord] = []
        # the template's fields, for building copies faster than dataclasses.replace (1M of them)
        self._fields = {f.name: getattr(template, f.name) for f in fields(template)}

    def records(self, n: int, **changes: Any) -> list[JobRecord]:
        """``n`` copies of the template, each with a fresh id and enqueue time."""
        base = {**self._fields, **changes}
        return [JobRecord(**{**base, "id": new_id(), "enqueued_at": utcnow()}) for _ in range(n)]

    async def setup(self) -> None:
        # a full page of each finished status, so that every list call returns LIST_PAGE rows on
        # the small store as on the grown one (an empty list is no baseline for a full page)
        await seed_unhappy(self, LIST_PAGE, LIST_PAGE, LIST_PAGE)
        await seed_finished(self, LIST_PAGE)
        await self.backend.enqueue(self.records(LIVE_RUNNING))
        self.running = await self.backend.claim([self.queue.name], "bench-live", LIVE_RUNNING, LEASE)
        await self.backend.enqueue(self.records(LIVE_QUEUED))

    async def teardown(self) -> None:
        """Finish every job the live set (and the measurements) left queued or running."""
        await self.backend.complete([Ack(r.id, r.lease_token or "", None) for r in self.running])
        while claimed := await self.backend.claim([self.queue.name], "bench-live", SEED_BATCH, LEASE):
            await self.backend.complete([Ack(r.id, r.lease_token or "", None) for r in claimed])
        # a claim that found nothing may have registered the name as an idle worker (Redis hands
        # new jobs straight to one): say it is gone, so later enqueues stay queued
        await self.backend.retire("bench-live")


async def measure_figures(live: Live, rounds: int) -> dict[str, float]:
    """Claim, enqueue, stats and list timings (median and p99, ms) on the store as it is."""
    queue, backend = live.queue, live.backend
    noop = queue.tasks["noop"]
    claims = []
    for _ in range(min(rounds, 10)):  # warm up: connections, statement caches, the WAL file's size
        await noop.enqueue()
        await queue.stats()
        await queue.list_jobs(limit=50)
    for _ in range(rounds):
        await backend.enqueue(live.records(CLAIM_BATCH))  # top up: the queue stays ~1,000 deep
        start = time.perf_counter()
        got = await backend.claim([queue.name], "bench-claim", CLAIM_BATCH, LEASE)
        claims.append(time.perf_counter() - start)
        await backend.complete([Ack(r.id, r.lease_token or "", None) for r in got])
    await backend.retire("bench-claim")
    out = _ms(claims, "claim")
    out |= _ms(await _timed(rounds * 2, noop.enqueue), "enqueue")
    out |= _ms(await _timed(rounds, queue.stats), "stats")
    for status in LISTED:
        def listing(s: str | None = status) -> Awaitable[list[JobRecord]]:
            return queue.list_jobs(status=s, limit=LIST_PAGE)

        out |= _ms(await _timed(rounds, listing), f"list_{status or 'all'}")
    return out


# -- growing the store -----------------------------------------------------------------------------
async def seed_finished(live: Live, n: int) -> None:
    """``n`` jobs through enqueue, claim and complete, in batches, as a worker would finish them.

    Two seeders run side by side, so one builds and decodes records while the store works for the
    other; a claim may take the other's jobs, which is fine: a last sweep claims whatever is left.
    """
    backend, name = live.backend, live.queue.name
    sizes = [min(SEED_BATCH, n - done) for done in range(0, n, SEED_BATCH)]

    async def seeder(worker: str, mine: list[int]) -> None:
        for size in mine:
            await backend.enqueue(live.records(size))
            claimed = await backend.claim([name], worker, size, LEASE)
            await backend.complete([Ack(r.id, r.lease_token or "", None) for r in claimed])

    names = [f"bench-seed-{i}" for i in range(SEEDERS)]
    await asyncio.gather(*(seeder(w, sizes[i::SEEDERS]) for i, w in enumerate(names)))
    for worker in names:  # jobs the other seeder took, or that were handed to an idle name
        while claimed := await backend.claim([name], worker, SEED_BATCH, LEASE):
            await backend.complete([Ack(r.id, r.lease_token or "", None) for r in claimed])
        await backend.retire(worker)


async def seed_unhappy(live: Live, failed: int, dead: int, cancelled: int) -> None:
    """Finished jobs that did not succeed, so the dashboard's failed/dead lists have rows."""
    backend, name = live.backend, live.queue.name
    error: ErrorInfo = {"type": "RuntimeError", "message": "seeded failure", "traceback": "Traceback: ..."}
    todo = [False] * failed + [True] * dead
    for start in range(0, len(todo), CLAIM_BATCH):
        chunk = todo[start:start + CLAIM_BATCH]
        await backend.enqueue(live.records(len(chunk)))
        claimed = await backend.claim([name], "bench-seed", len(chunk), LEASE)
        await asyncio.gather(*(backend.fail(Lease(r.id, r.lease_token or ""), error,
                                            retry_at=None, dead=is_dead)
                               for r, is_dead in zip(claimed, chunk, strict=True)))
    for start in range(0, cancelled, CLAIM_BATCH):
        batch = live.records(min(CLAIM_BATCH, cancelled - start))
        await backend.enqueue(batch)
        await asyncio.gather(*(backend.cancel(r.id) for r in batch))
    await backend.retire("bench-seed")


async def seed_delayed(live: Live, n: int) -> None:
    """``n`` jobs due over the next week (none due while the figures are taken)."""
    now = utcnow()
    week = 7 * 86_400
    for done in range(0, n, SEED_BATCH):
        size = min(SEED_BATCH, n - done)
        await live.backend.enqueue([
            replace(live.template, id=new_id(), enqueued_at=now,
                    scheduled_for=now + timedelta(seconds=3_600 + (done + i) * week / n))
            for i in range(size)])


# -- looking at the store from outside: its size, and a writer probe during purge ------------------
def sqlite_path(url: str) -> str | None:
    parts = urlsplit(url)
    return parts.path if parts.scheme == "sqlite" else None


async def store_bytes(url: str) -> int:
    """SQLite: the database's pages (WAL included, as a reader sees it); Redis: ``used_memory``;
    PostgreSQL: the tables and indexes of conveyor's schema."""
    if is_postgres(url):
        return await pg_store_bytes(url)
    path = sqlite_path(url)
    if path is not None:
        conn = sqlite3.connect(path)
        try:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
            return int((pages - free) * size)
        finally:
            conn.close()
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("memory")
        return int(info["used_memory"])
    finally:
        await client.aclose()


def _probe(url: str, ready: EventType, stop: EventType, out: Connection) -> None:
    """In another process: write in a tight loop; send back how long each write was kept waiting.

    SQLite: ``BEGIN IMMEDIATE; INSERT; COMMIT`` on a table of its own, with no busy timeout and an
    immediate retry while the database is locked, so a wait is measured to ~0.1 ms rather than to
    SQLite's busy-handler sleeps. Redis: one ``INCR`` per round trip. PostgreSQL: one ``INSERT``
    per transaction (benchmarks/pg_growth.py).
    """
    path = sqlite_path(url)
    waits: list[float] = []
    if is_postgres(url):  # INSERT and commit, one row at a time
        pg_probe(url, ready, stop, waits)
    elif path is not None:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")  # its own commit should cost next to nothing
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (at REAL)")
        ready.set()
        while not stop.is_set():
            start = time.perf_counter()
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.0001)
            conn.execute("INSERT INTO bench_probe VALUES (?)", (start,))
            conn.execute("COMMIT")
            waits.append(time.perf_counter() - start)
        conn.close()
    else:
        import redis

        client = redis.Redis.from_url(url)
        client.ping()
        ready.set()
        while not stop.is_set():
            start = time.perf_counter()
            client.incr("bench:probe")
            waits.append(time.perf_counter() - start)
        client.delete("bench:probe")
    out.send(waits)


async def purge_under_probe(queue: Queue, url: str, before: datetime) -> dict[str, float]:
    """Purge what finished before ``before`` while a probe writes; the longest wait it saw."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe, args=(url, ready, stop, send), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, ready.wait, 60):
        proc.kill()
        raise RuntimeError("the write probe did not start")
    await asyncio.sleep(0.2)  # a few undisturbed writes first
    start = time.perf_counter()
    purged = await queue.backend.purge(before)
    seconds = time.perf_counter() - start
    await asyncio.sleep(0.2)
    stop.set()
    waits: list[float] = await loop.run_in_executor(None, receive.recv)
    proc.join(10)
    return {"purge_jobs": purged, "purge_s": seconds, "purge_max_hold_ms": max(waits) * 1000,
            "purge_probe_p50_ms": statistics.median(waits) * 1000, "purge_probe_writes": len(waits)}


# -- the measurement -------------------------------------------------------------------------------
async def measure_growth(url: str, n: int, rounds: int) -> dict[str, float]:
    """Empty-store figures, then grow the store to ``n`` finished + ``n/10`` delayed, and again."""
    queue = make_queue(url)
    async with queue:
        template = replace(queue.tasks["noop"].prepare().record, status=JobStatus.QUEUED)
        live = Live(queue, template)
        await live.setup()
        empty = await measure_figures(live, rounds)
        await live.teardown()
        await queue.backend.purge(datetime.now(UTC))  # so the timed purge deletes the victims only

        victims, delayed = n // 10, n // 10
        failed, dead, cancelled = n // 200, n // 1_000, n // 1_000
        bytes_before = await store_bytes(url)
        start = time.perf_counter()
        await seed_finished(live, victims)
        time.sleep(0.05)  # noqa: ASYNC251 - the purge cut-off lies strictly between the two groups
        cutoff = datetime.now(UTC)
        time.sleep(0.05)  # noqa: ASYNC251
        await seed_finished(live, n - victims - failed - dead - cancelled)
        await seed_unhappy(live, failed, dead, cancelled)
        seed_finished_s = time.perf_counter() - start
        bytes_per_job = (await store_bytes(url) - bytes_before) / n
        await seed_delayed(live, delayed)
        seed_s = time.perf_counter() - start
        counts = await queue.stats()
        # the seeding left the kernel hundreds of MB of dirty pages to write back: let it finish
        # first, or every fsync of the grown store's figures waits behind that writeback
        await asyncio.to_thread(os.sync)

        await live.setup()
        grown = await measure_figures(live, rounds)
        await live.teardown()
        purge = await purge_under_probe(queue, url, cutoff)

    out: dict[str, float] = {
        "store_finished": sum(counts[s] for s in ("succeeded", "failed", "dead", "cancelled")),
        "store_delayed": counts["scheduled"], "seed_s": seed_s,
        "seed_finished_jobs_per_s": n / seed_finished_s, "bytes_per_finished_job": bytes_per_job,
    }
    for key, value in empty.items():
        out[f"{key}@empty"] = value
        out[f"{key}@grown"] = grown[key]
    for fig in FIGURES:
        out[f"{fig}_ratio"] = grown[f"{fig}_p50_ms"] / empty[f"{fig}_p50_ms"]
    return out | purge


def growth_rows(figures: dict[str, float]) -> list[tuple[str, str, str, str, str]]:
    """(figure, empty, grown, grown/empty, goal) rows for the report."""
    rows = []
    for fig in FIGURES:
        if f"{fig}_ratio" not in figures:
            continue
        ratio = figures[f"{fig}_ratio"]
        met = ratio <= RATIO_GOAL
        rows.append((
            f"{fig.replace('_', ' ')} p50 / p99 (ms)",
            f"{figures[f'{fig}_p50_ms@empty']:.2f} / {figures[f'{fig}_p99_ms@empty']:.2f}",
            f"{figures[f'{fig}_p50_ms@grown']:.2f} / {figures[f'{fig}_p99_ms@grown']:.2f}",
            f"{ratio:.2f}x",
            f"[{'green' if met else 'bold red'}]{'met' if met else 'MISSED'} (<= {RATIO_GOAL}x)[/]",
        ))
    if "purge_max_hold_ms" in figures:
        hold = figures["purge_max_hold_ms"]
        met = hold <= PURGE_HOLD_GOAL_MS
        rows.append((
            f"purge {figures['purge_jobs']:,.0f} finished jobs: longest writer wait (ms)", "-",
            f"{hold:.1f} (purge {figures['purge_s']:.1f} s)", "",
            f"[{'green' if met else 'bold red'}]{'met' if met else 'MISSED'} "
            f"(<= {PURGE_HOLD_GOAL_MS:g} ms)[/]"))
    if "bytes_per_finished_job" in figures:
        rows.append(("bytes per finished job", "-", f"{figures['bytes_per_finished_job']:,.0f}", "", ""))
        rows.append((
            f"seed {figures['store_finished']:,.0f} finished + {figures['store_delayed']:,.0f} delayed",
            "-", f"{figures['seed_s']:.1f} s ({figures['seed_finished_jobs_per_s']:,.0f} finished/s)",
            "", ""))
    return rows


__all__ = ["growth_rows", "measure_growth"]
