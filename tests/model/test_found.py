"""Divergences the model-based test found, each as a minimal reproduction on the backend contract.

A test here is marked ``xfail(strict=True)`` on the backends where it fails today, so the suite stays
green until the fix lands; then it passes, strict xfail turns that into a failure, and whoever fixed
it removes the mark and the matching exclusion in ``machine.py`` (``KNOWN_BAD``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import BACKENDS  # tests/ is on sys.path
from waiting import wait_until

from conveyor.backends import open_backend
from conveyor.backends.base import Backend, Lease
from conveyor.model import JobRecord, new_id


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _on(backend_bugs: dict[str, str]) -> list[object]:
    """One param per backend; strict xfail where ``backend_bugs`` names the known bug."""
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=backend_bugs[name]))
        if name in backend_bugs else name
        for name in BACKENDS
    ]


@pytest.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh, open backend of the parametrized kind."""
    backend = open_backend(BACKENDS[request.param](request, tmp_path))
    await backend.open()
    yield backend
    await backend.close()


SUPERSEDE_IN_BATCH = (
    "sqlite enqueue writes the batch's first status events after the whole batch, reading the "
    "status then: a job superseded later in the same batch gets 'cancelled' twice, never 'queued'"
)


@pytest.mark.parametrize("store", list(BACKENDS), indirect=True)
async def test_job_superseded_in_its_own_batch_was_queued_first(store: Backend) -> None:
    """A job superseded by a later job of the same enqueue batch has events queued, then cancelled."""
    first = JobRecord(id=new_id(), task="t", key="lane")
    second = JobRecord(id=new_id(), task="t", key="lane", supersede=True)
    await store.enqueue([first, second])
    events = await store.events(first.id)
    assert [(e.seq, e.data["status"]) for e in events] == [(1, "queued"), (2, "cancelled")]
    assert [e.data["status"] for e in await store.events(second.id)] == ["queued"]


EMPTY_TOKEN = (
    "redis cancel.lua takes an empty token for 'no lease': cancel(id, lease=Lease(id, '')) of a "
    "queued job cancels it, where a token that is not the current one must change nothing"
)


@pytest.mark.parametrize("store", list(BACKENDS), indirect=True)
async def test_cancel_with_an_empty_token_is_fenced_out(store: Backend) -> None:
    """A worker's cancel naming a lease token that is not current (here '') changes nothing."""
    job = JobRecord(id=new_id(), task="t")
    await store.enqueue([job])
    after = await store.cancel(job.id, lease=Lease(job.id, ""))
    assert after is not None and after.status == "queued"
    assert [e.data["status"] for e in await store.events(job.id)] == ["queued"]


DUE_PROMOTION = (
    "a documented limit (docs/semantics.md, Ordering): Redis and SQLite move at most 1000 due "
    "scheduled jobs per queue into the claimable order per claim, earliest due first, so a "
    "higher-priority job due after 1000 others can be passed over for a lower-priority one"
)


@pytest.mark.parametrize(
    "store",
    _on({"redis": DUE_PROMOTION, "sqlite": DUE_PROMOTION, "postgresql": DUE_PROMOTION}),
    indirect=True,
)
async def test_claim_takes_the_highest_priority_among_many_due_jobs(store: Backend) -> None:
    """With over 1000 delayed jobs due at once, claim still takes the highest priority first."""
    now = time.time()
    low = [
        JobRecord(id=new_id(), task="t", priority=0, scheduled_for=_at(now + 0.2))
        for _ in range(1100)
    ]
    high = JobRecord(id=new_id(), task="t", priority=9, scheduled_for=_at(now + 0.3))
    await store.enqueue([*low, high])
    await wait_until(lambda: time.time() > now + 0.35, message="the delays passed")
    claimed = await store.claim(["default"], "w", 1, 60)
    assert [r.id for r in claimed] == [high.id]


OVER_4000 = (
    "redis scripts unpack() their gathered writes in one call, which fails past ~8000 values: a "
    "claim of 5000 jobs raises after marking them all running (issue 7, item 1)"
)


@pytest.mark.parametrize("store", list(BACKENDS), indirect=True)
async def test_claim_of_5000_jobs_at_once(store: Backend) -> None:
    """One claim can take 5000 jobs, and they are all running afterwards."""
    await store.enqueue([JobRecord(id=new_id(), task="t") for _ in range(5000)])
    claimed = await store.claim(["default"], "w", 5000, 60)
    assert len(claimed) == 5000
    assert (await store.stats())["running"] == 5000


STALE_PLACE = (
    "memory: a job cancelled while waiting leaves its (priority, seq) entry in the ready heap; "
    "retried by hand it gets a new seq, but claim pops the stale entry first and takes it at its "
    "old place, ahead of jobs enqueued after it"
)


@pytest.mark.parametrize("store", list(BACKENDS), indirect=True)
async def test_retried_job_goes_to_the_back_after_a_cancel_while_waiting(store: Backend) -> None:
    """A job cancelled while queued, then retried by hand, is claimed after jobs enqueued before the retry."""
    first = JobRecord(id=new_id(), task="t")
    later = JobRecord(id=new_id(), task="t")
    await store.enqueue([first])
    await store.cancel(first.id)
    await store.enqueue([later])
    await store.retry(first.id)
    claimed = await store.claim(["default"], "w", 2, 60)
    assert [r.id for r in claimed] == [later.id, first.id]


EMPTY_KEY_RECOVER = (
    "sqlite recover() hands a lane on after a cancel-requested job ends cancelled only when "
    "`r[3]` (the key) is truthy: with key '' the next job of the lane stays blocked for good"
)


@pytest.mark.parametrize("store", list(BACKENDS), indirect=True)
async def test_lane_with_empty_key_moves_on_after_recover_cancels(store: Backend) -> None:
    """Lane '' : when recover() ends a cancel-requested running job cancelled, the next job runs."""
    first = JobRecord(id=new_id(), task="t", key="")
    second = JobRecord(id=new_id(), task="t", key="")
    await store.enqueue([first, second])
    (claimed,) = await store.claim(["default"], "w", 1, 0.001)
    await store.cancel(claimed.id)  # a cancel request; then the worker dies
    assert claimed.lease_expires_at is not None
    expires = claimed.lease_expires_at.timestamp()
    await wait_until(lambda: time.time() > expires + 0.003, message="the lease ran out")
    assert await store.recover() == [first.id]
    assert [r.id for r in await store.claim(["default"], "w", 1, 60)] == [second.id]
