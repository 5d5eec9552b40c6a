"""The SQLite backend stays fast as the store grows: what each verb reads does not grow with it.

Timings on a shared machine are noise, so these tests count what SQLite does instead: the virtual
machine steps of each verb (a progress handler), the plan of every statement it runs
(``EXPLAIN QUERY PLAN``), and the transactions a purge takes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until  # tests/ is on sys.path

from conveyor.backends.base import Ack, JobFilter, Lease
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.model import ErrorInfo, JobRecord, JobStatus, new_id

Q = "scale"
FINISHED = ("succeeded", "failed", "dead", "cancelled")
ERROR: ErrorInfo = {"type": "ValueError", "message": "boom", "traceback": ""}


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    """An open SQLite backend on a fresh file."""
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'scale.db'}")
    await backend.open()
    yield backend
    await backend.close()


def grow(path: Path, *, finished: int, delayed: int, finished_at: float | None = None) -> None:
    """Store jobs as the backend stores them (with their events), in one transaction.

    ``finished`` jobs spread over the finished statuses (most succeeded, as in real stores);
    ``delayed`` jobs are scheduled a day ahead.
    """
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    pos = conn.execute("SELECT value FROM conveyor_meta WHERE name = 'pos'").fetchone()[0]
    jobs: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for i in range(finished + delayed):
        pos += 1
        job_id = new_id()
        if i < finished:
            status = FINISHED[i % 10] if i % 10 < len(FINISHED) else "succeeded"
            end = finished_at if finished_at is not None else now - 60
            jobs.append((job_id, pos, status, 1, end - 1, None, end - 1, end - 1, end,
                         None if status == "succeeded" else json.dumps(ERROR), 3))
            events += [(job_id, 1, "status", end, '{"status":"queued","attempt":0}'),
                       (job_id, 2, "status", end, '{"status":"running","attempt":1}'),
                       (job_id, 3, "status", end, json.dumps({"status": status, "attempt": 1}))]
        else:
            due = now + 86400 + i
            jobs.append((job_id, pos, "scheduled", 0, now, due, due, None, None, None, 1))
            events.append((job_id, 1, "status", now, '{"status":"scheduled","attempt":0}'))
    conn.executemany(
        "INSERT INTO conveyor_jobs (id, pos, task, queue, status, args, kwargs, attempts, "
        "enqueued_at, scheduled_for, run_at, started_at, finished_at, error, last_event) "
        f"VALUES (?, ?, 'noop', '{Q}', ?, '[]', '{{}}', ?, ?, ?, ?, ?, ?, ?, ?)",
        jobs,
    )
    conn.executemany("INSERT INTO conveyor_events VALUES (?, ?, ?, ?, ?)", events)
    conn.execute("UPDATE conveyor_meta SET value = ? WHERE name = 'pos'", (pos,))
    conn.execute("COMMIT")
    conn.close()


async def steps(backend: SQLiteBackend, call: Callable[[], Awaitable[object]]) -> int:
    """How many SQLite virtual machine steps (in tens) ``call`` takes on the backend's connection."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    assert backend._conn is not None
    backend._conn.set_progress_handler(tick, 10)
    try:
        await call()
    finally:
        backend._conn.set_progress_handler(None, 10)
    return count


async def verb_steps(backend: SQLiteBackend) -> dict[str, int]:
    """The steps of each verb the dashboard or a worker repeats, measured on the current store."""
    out: dict[str, int] = {}
    job = JobRecord(id=new_id(), task="noop", queue=Q)
    out["enqueue"] = await steps(backend, lambda: backend.enqueue([job]))
    claimed: list[JobRecord] = []

    async def claim() -> None:
        claimed.extend(await backend.claim([Q], "w", 1, 60))

    out["claim"] = await steps(backend, claim)
    assert [j.id for j in claimed] == [job.id]
    await backend.complete([Ack(job.id, claimed[0].lease_token or "", None)])
    out["claim, nothing ready"] = await steps(backend, lambda: backend.claim([Q], "w", 1, 60))
    out["claim, two queues"] = await steps(backend, lambda: backend.claim([Q, "other"], "w", 1, 60))
    out["stats(queue)"] = await steps(backend, lambda: backend.stats(Q))
    out["stats()"] = await steps(backend, lambda: backend.stats())
    out["next due"] = await steps(backend, lambda: backend._next_due([Q]))
    lane = JobRecord(id=new_id(), task="noop", queue=Q, key="lane", supersede=True)
    out["enqueue, supersede"] = await steps(backend, lambda: backend.enqueue([lane]))
    await backend.cancel(lane.id)  # leaves the next round's claim as it found it
    for status in (*FINISHED, "running", "queued", "scheduled", None):
        for queue in (Q, None):
            flt = JobFilter(queue=queue, status=JobStatus(status) if status else None, limit=5)
            name = f"list {queue or 'every queue'} {status or 'any status'}"
            out[name] = await steps(backend, partial(backend.list_jobs, flt))
    return out


async def test_claim_stats_and_lists_do_not_read_more_as_finished_and_delayed_jobs_pile_up(
    backend: SQLiteBackend,
) -> None:
    """With 100 times more finished and delayed jobs, no verb takes more than 1.5x the steps."""
    grow(backend.path, finished=200, delayed=50)
    small = await verb_steps(backend)
    grow(backend.path, finished=20_000, delayed=5_000)
    grown = await verb_steps(backend)
    worse = {
        name: (small[name], grown[name]) for name in small
        if grown[name] > small[name] * 1.5 + 20
    }
    assert not worse, f"steps (small store, grown store) that grew with the store: {worse}"


@contextmanager
def traced(backend: SQLiteBackend) -> Iterator[list[str]]:
    """Every statement the backend's connection runs inside the block, with its values."""
    seen: list[str] = []
    assert backend._conn is not None
    backend._conn.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        backend._conn.set_trace_callback(None)


async def every_verb(backend: SQLiteBackend) -> None:
    """Run each verb at least once, through the paths that touch lanes, unique and schedules."""
    now = datetime.now(UTC)
    first = [
        JobRecord(id=new_id(), task="t", queue=Q, key="k", unique="u"),
        JobRecord(id=new_id(), task="t", queue=Q, key="k", supersede=True),
        JobRecord(id=new_id(), task="t", queue=Q, scheduled_for=now - timedelta(seconds=1)),
        JobRecord(id=new_id(), task="t", queue=Q, scheduled_for=now + timedelta(hours=1)),
        JobRecord(id=new_id(), task="t", queue="other", priority=5),
    ]
    await backend.enqueue(first)
    await backend.enqueue([JobRecord(id=new_id(), task="t", queue=Q, unique="u")])
    got = await backend.claim([Q], "w", 10, 60)
    got += await backend.claim([Q, "other"], "w", 10, 60)
    assert len(got) >= 3
    leases = [Lease(j.id, j.lease_token or "") for j in got]
    await backend.renew(leases, 60)
    await backend.progress(leases[0], 0.5, "half")
    await backend.complete([Ack(leases[0].job_id, leases[0].token, 1)])
    await backend.fail(leases[1], ERROR, retry_at=now + timedelta(hours=1))
    await backend.fail(leases[2], ERROR, retry_at=None)
    await backend.retry(leases[2].job_id)
    again = await backend.claim([Q, "other"], "w", 10, -1)  # leases already expired
    await backend.release([Lease(j.id, j.lease_token or "") for j in again[:1]])
    await backend.cancel(first[3].id)
    await backend.recover(3)
    await backend.recover(None)
    await backend.cancel_requested([j.id for j in first])
    await backend.get(first[0].id)
    await backend.events(first[0].id)
    for status in (None, JobStatus.FAILED):
        for queue in (Q, None):
            await backend.list_jobs(JobFilter(queue=queue, status=status))
    await backend.stats()
    await backend.stats(Q)
    await backend._next_due([Q, "other"])
    await backend.purge(now + timedelta(days=1))


async def test_every_statement_reads_an_index_not_the_whole_table(backend: SQLiteBackend) -> None:
    """No statement of any verb scans conveyor_jobs or conveyor_events (only the running jobs'
    index is read whole); supersede uses the lane index."""
    grow(backend.path, finished=100, delayed=10)
    with traced(backend) as seen:
        await every_verb(backend)
    conn = sqlite3.connect(backend.path)
    scans: dict[str, list[str]] = {}
    for statement in seen:
        if statement.split()[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK"):
            continue
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}")]
        # the one index read whole is the running jobs' (a list of running jobs): there are
        # only as many as the workers' slots, however big the store
        bad = [
            line for line in plan
            if line.startswith(("SCAN conveyor_jobs", "SCAN conveyor_events"))
            and line != "SCAN conveyor_jobs USING INDEX conveyor_jobs_running"
        ]
        if bad:
            scans[statement[:160]] = plan
        if "status = 'cancelled'" in statement and "key = " in statement:
            assert any("conveyor_jobs_lane" in line for line in plan), (statement, plan)
    conn.close()
    assert len(seen) > 40
    assert not scans, scans


async def test_counts_kept_for_stats_match_the_jobs_after_every_transition(
    backend: SQLiteBackend,
) -> None:
    """stats() (read from the kept counts) equals a count of the jobs, per queue and overall."""
    grow(backend.path, finished=50, delayed=5)
    await every_verb(backend)
    conn = sqlite3.connect(backend.path)
    for queue in (Q, "other", None):
        where, args = ("WHERE queue = ?", (queue,)) if queue else ("", ())
        counted = dict(conn.execute(
            f"SELECT status, COUNT(*) FROM conveyor_jobs {where} GROUP BY status", args
        ).fetchall())
        expected = {status.value: counted.get(status.value, 0) for status in JobStatus}
        assert await backend.stats(queue) == expected
    conn.close()


async def test_purge_deletes_in_several_short_transactions_events_included(
    backend: SQLiteBackend,
) -> None:
    """A big purge commits batch by batch, deletes the jobs' events too, and keeps recent jobs."""
    ten_days_ago = time.time() - 10 * 86400
    grow(backend.path, finished=5_000, delayed=0, finished_at=ten_days_ago)
    grow(backend.path, finished=30, delayed=0)
    with traced(backend) as seen:
        purged = await backend.purge(datetime.now(UTC) - timedelta(days=7))
    assert purged == 5_000
    commits = [s for s in seen if s.upper().startswith("COMMIT")]
    assert len(commits) >= 3, f"{len(commits)} transaction(s) for 5,000 jobs"
    conn = sqlite3.connect(backend.path)
    assert conn.execute("SELECT COUNT(*) FROM conveyor_jobs").fetchone()[0] == 30
    orphans = conn.execute(
        "SELECT COUNT(*) FROM conveyor_events WHERE job_id NOT IN (SELECT id FROM conveyor_jobs)"
    ).fetchone()[0]
    conn.close()
    assert orphans == 0
    assert sum((await backend.stats(Q)).values()) == 30


async def test_progress_is_one_update_and_one_insert(backend: SQLiteBackend) -> None:
    """A progress report writes in two statements: the fenced update and its event."""
    job = JobRecord(id=new_id(), task="t", queue=Q)
    await backend.enqueue([job])
    [running] = await backend.claim([Q], "w", 1, 60)
    with traced(backend) as seen:
        assert await backend.progress(Lease(job.id, running.lease_token or ""), 0.5, "half")
    body = [s for s in seen if s.split()[0].upper() not in ("BEGIN", "COMMIT")]
    assert len(body) == 2, body
    events = await backend.events(job.id)
    assert (events[-1].type, events[-1].data) == ("progress", {"fraction": 0.5, "message": "half"})
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_due_jobs_past_one_claims_batch_are_all_claimed_in_order_and_stay_scheduled(
    backend: SQLiteBackend,
) -> None:
    """More due jobs than one claim moves across are all claimed once, oldest first; a due job
    not yet claimed still reads as scheduled."""
    from conveyor.backends.sqlite.claims import PROMOTE_BATCH

    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    due = [JobRecord(id=new_id(), task="t", queue=Q, scheduled_for=soon)
           for _ in range(PROMOTE_BATCH + 500)]
    await backend.enqueue(due)
    late = JobRecord(id=new_id(), task="t", queue=Q)
    await backend.enqueue([late])
    await wait_until(lambda: datetime.now(UTC) > soon, message="the jobs fall due")
    [first] = await backend.claim([Q], "w", 1, 60)
    assert first.id == due[0].id  # enqueued before `late`: the same priority goes in enqueue order
    second = await backend.get(due[1].id)
    assert second is not None and second.status is JobStatus.SCHEDULED
    taken = [first.id]
    while batch := await backend.claim([Q], "w", 100, 60):
        taken += [j.id for j in batch]
    assert taken == [j.id for j in due] + [late.id]


async def test_lists_merged_in_one_statement_or_range_by_range_agree(
    backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every filter (queue, status, task, limit, offset) lists the same jobs, in the same order,
    whether its index ranges are merged in one statement or a range at a time."""
    from conveyor.backends.sqlite import admin

    for queue in ("a", "b", "c"):
        await backend.enqueue([
            JobRecord(id=new_id(), task="xy"[i % 2], queue=queue, priority=i % 4) for i in range(40)
        ])
    running = await backend.claim(["a", "b", "c"], "w", 50, 60)
    await backend.complete([Ack(j.id, j.lease_token or "", 1) for j in running[:30]])
    filters = [
        JobFilter(queue=queue, status=status, task=task, limit=limit, offset=offset)
        for queue in (None, "a")
        for status in (None, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
        for task in (None, "x")
        for limit, offset in ((5, 0), (7, 3), (50, 10))
    ]
    merged = [[j.id for j in await backend.list_jobs(flt)] for flt in filters]
    monkeypatch.setattr(admin, "_MERGE_RANGES", 1)
    one_at_a_time = [[j.id for j in await backend.list_jobs(flt)] for flt in filters]
    assert merged == one_at_a_time
    assert sum(map(len, merged)) > 300


async def test_lists_over_more_queues_than_one_merge_takes_stay_on_their_indexes(tmp_path: Path) -> None:
    """Listing every queue when 300 queues hold jobs: newest first, paged, and no table scan."""
    from conveyor.backends.base import JobFilter
    from conveyor.backends.sqlite import SQLiteBackend

    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'many.db'}")
    await backend.open()
    try:
        jobs = [JobRecord(id=new_id(), task="t", queue=f"q{i}") for i in range(300)]
        await backend.enqueue(jobs)
        newest = [j.id for j in reversed(jobs)]
        assert [r.id for r in await backend.list_jobs(JobFilter(limit=50))] == newest[:50]
        page = await backend.list_jobs(JobFilter(limit=40, offset=230))
        assert [r.id for r in page] == newest[230:270]
    finally:
        await backend.close()
