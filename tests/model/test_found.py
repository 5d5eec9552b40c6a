"""Divergences the model-based test found, each as a minimal reproduction on the backend contract.

A test here is marked ``xfail(strict=True)`` on the backends where it fails today, so the suite stays
green until the fix lands; then it passes, strict xfail turns that into a failure, and whoever fixed
it removes the mark and the matching exclusion in ``machine.py`` (``KNOWN_BAD``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import BACKENDS  # tests/ is on sys.path

from conveyor.backends import open_backend
from conveyor.backends.base import Backend, Lease
from conveyor.model import JobRecord, new_id


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


@pytest.mark.parametrize("store", _on({"sqlite": SUPERSEDE_IN_BATCH}), indirect=True)
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


@pytest.mark.parametrize("store", _on({"redis": EMPTY_TOKEN}), indirect=True)
async def test_cancel_with_an_empty_token_is_fenced_out(store: Backend) -> None:
    """A worker's cancel naming a lease token that is not current (here '') changes nothing."""
    job = JobRecord(id=new_id(), task="t")
    await store.enqueue([job])
    after = await store.cancel(job.id, lease=Lease(job.id, ""))
    assert after is not None and after.status == "queued"
    assert [e.data["status"] for e in await store.events(job.id)] == ["queued"]
