"""PostgreSQL's growth figures: the store's size, a writer probe during purge, and drain while
another session holds an old snapshot.

``growth.py`` calls :func:`store_bytes` and :func:`probe` for ``postgresql://`` stores;
``run.py``'s ``snapshot_drain`` measurement is :func:`measure_snapshot_drain`.

A ``REPEATABLE READ`` transaction that stays open (analytics, a forgotten ``BEGIN``) keeps every
row version deleted or updated after its snapshot from being vacuumed, so a ``SKIP LOCKED`` queue
walks past more and more dead index entries: the known way such queues slow down. The figure is
the drain rate of a steady churn (enqueue 1,000, claim them 10 at a time and complete them, again)
over ``seconds`` with such a snapshot held, beside the same churn without one; an untimed
warm-up comes first, and each run starts from a vacuumed, analysed store (so the order of the
two runs favours neither).
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.synchronize import Event as EventType
from urllib.parse import parse_qs, urlsplit, urlunsplit

from benchmarks.bench_app import make_queue
from conveyor.backends.base import Ack

__all__ = ["is_postgres", "measure_snapshot_drain", "probe", "snapshot_rows", "store_bytes"]

CHURN_BATCH = 1_000  # jobs enqueued at once by the churn
CHURN_CLAIM = 10  # jobs per claim (a worker of concurrency 10 asks for about that many)
SNAPSHOT_GOAL = 2.0  # drain with the snapshot held: at most this many times slower


def is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in ("postgresql", "postgres")


def _split(url: str) -> tuple[str, str]:
    """(the server URL without conveyor's options, the schema)."""
    parts = urlsplit(url)
    schema = parse_qs(parts.query).get("schema", ["conveyor"])[0]
    return urlunsplit(parts._replace(query="")), schema


async def store_bytes(url: str) -> int:
    """Every table and index of conveyor's schema (TOAST included), as the server counts them."""
    import asyncpg

    server, schema = _split(url)
    conn = await asyncpg.connect(server)
    try:
        return int(await conn.fetchval(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
            schema,
        ))
    finally:
        await conn.close()


def probe(url: str, ready: EventType, stop: EventType, waits: list[float]) -> None:
    """Insert and commit one row at a time on a table of its own until ``stop``; each wait."""

    import asyncpg

    async def run() -> None:
        server, _ = _split(url)
        conn = await asyncpg.connect(server)
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (at float8)")
        ready.set()
        while not stop.is_set():
            start = time.perf_counter()
            await conn.execute("INSERT INTO bench_probe VALUES ($1)", start)
            waits.append(time.perf_counter() - start)
        await conn.execute("DROP TABLE bench_probe")
        await conn.close()

    asyncio.run(run())


async def _churn(url: str, seconds: float) -> tuple[float, float]:
    """Enqueue, claim and complete for ``seconds``: (jobs/s overall, jobs/s in the last quarter)."""
    queue = make_queue(url)
    async with queue:
        backend, template = queue.backend, queue.tasks["noop"]
        done, marks = 0, []
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            marks.append((now, done))
            await backend.enqueue([template.prepare().record for _ in range(CHURN_BATCH)])
            while claimed := await backend.claim([queue.name], "bench-churn", CHURN_CLAIM, 600.0):
                await backend.complete([Ack(r.id, r.lease_token or "", None) for r in claimed])
                done += len(claimed)
        elapsed = time.perf_counter() - start
        late = [(t, d) for t, d in marks if t - start >= seconds * 0.75] or marks[-1:]
        t0, d0 = late[0]
        tail = (done - d0) / max(time.perf_counter() - t0, 1e-9)
        await backend.retire("bench-churn")
    return done / elapsed, tail


async def measure_snapshot_drain(url: str, seconds: float) -> dict[str, float]:
    """The churn's drain rate without and then with a REPEATABLE READ snapshot held open."""
    if not is_postgres(url):
        return {}
    import asyncpg

    server, schema = _split(url)

    async def vacuum() -> None:
        """Each run starts from a vacuumed, analysed store (a fresh one has no statistics)."""
        conn = await asyncpg.connect(server)
        try:
            for table in await conn.fetch(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = $1", schema
            ):
                await conn.execute(f'VACUUM ANALYZE "{schema}".{table[0]}')
        finally:
            await conn.close()

    await _churn(url, min(5.0, seconds))  # warm-up, untimed: plans, caches, table statistics
    await vacuum()
    normal, normal_tail = await _churn(url, seconds)
    await vacuum()
    holder = await asyncpg.connect(server)
    try:
        await holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await holder.fetchval("SELECT count(*) FROM pg_class")  # the snapshot is taken here
        held, held_tail = await _churn(url, seconds)
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    return {
        "snapshot_seconds": seconds,
        "snapshot_normal_jobs_per_s": normal, "snapshot_normal_tail_jobs_per_s": normal_tail,
        "snapshot_held_jobs_per_s": held, "snapshot_held_tail_jobs_per_s": held_tail,
        "snapshot_slowdown": normal / held, "snapshot_tail_slowdown": normal_tail / held_tail,
    }


def snapshot_rows(figures: dict[str, float]) -> list[tuple[str, str, str, str, str]]:
    """(figure, without, with the snapshot, slowdown, goal) rows for the growth report."""
    if "snapshot_slowdown" not in figures:
        return []
    rows = []
    for label, key in (("whole run", ""), ("last quarter", "_tail")):
        slowdown = figures[f"snapshot{key}_slowdown"]
        met = slowdown <= SNAPSHOT_GOAL
        rows.append((
            f"drain (jobs/s), {figures['snapshot_seconds']:.0f} s with a REPEATABLE READ snapshot "
            f"held, {label}",
            f"{figures[f'snapshot_normal{key}_jobs_per_s']:,.0f}",
            f"{figures[f'snapshot_held{key}_jobs_per_s']:,.0f}", f"{slowdown:.2f}x slower",
            f"[{'green' if met else 'bold red'}]{'met' if met else 'MISSED'} "
            f"(<= {SNAPSHOT_GOAL:g}x)[/]",
        ))
    return rows
