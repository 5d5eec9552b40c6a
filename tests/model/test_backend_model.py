"""Each backend answers every random operation sequence exactly as the reference model does.

``machine.BackendMachine`` drives a real backend (memory, SQLite, Redis: every entry of
``tests/conftest.py``'s ``BACKENDS``) and ``reference.Model`` with the same operations and compares
every answer. Two profiles: a short one in ``make test``, a long one behind ``-m model_long``::

    .venv/bin/pytest tests/model -q
    .venv/bin/pytest tests/model -m model_long

A failure prints the shortest operation sequence hypothesis found and a ``@reproduce_failure``
blob to replay it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from conftest import BACKENDS  # tests/ is on sys.path
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from .machine import BackendMachine

_COMMON = {
    "deadline": None,
    "derandomize": False,
    "database": None,  # nothing written into the worktree; print_blob replays a failure
    "print_blob": True,
    "suppress_health_check": list(HealthCheck),
}
#: the short profile: part of ``make test`` (all backends together well under a minute)
SHORT = settings(max_examples=20, stateful_step_count=40, **_COMMON)  # type: ignore[arg-type]
#: the long profile: ``pytest tests/model -m model_long``
LONG = settings(max_examples=500, stateful_step_count=60, **_COMMON)  # type: ignore[arg-type]


def _machine(request: pytest.FixtureRequest, tmp_path: Path, backend: str, *, big: bool) -> type:
    """The state machine class for ``backend``: each example gets a fresh store of its own."""
    factory = BACKENDS[backend]
    numbers = itertools.count()

    def new_url() -> str:
        folder = tmp_path / f"example-{next(numbers)}"
        folder.mkdir()
        return factory(request, folder)

    attrs: dict[str, object] = {"backend_name": backend, "new_url": staticmethod(new_url)}
    if big:  # now and then a batch or a claim of thousands of jobs
        attrs["BATCH_SIZES"] = (*BackendMachine.BATCH_SIZES, 500, 5000)
        attrs["CLAIM_LIMITS"] = (*BackendMachine.CLAIM_LIMITS, 5000)
    else:
        attrs["BATCH_SIZES"] = (*BackendMachine.BATCH_SIZES, 500)
        attrs["CLAIM_LIMITS"] = (*BackendMachine.CLAIM_LIMITS, 1000)
    return type(f"{backend.capitalize()}Machine", (BackendMachine,), attrs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_agrees_with_model(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Short profile: random operation sequences give the model's answers on every backend."""
    run_state_machine_as_test(_machine(request, tmp_path, backend, big=False), settings=SHORT)


@pytest.mark.model_long
@pytest.mark.timeout(4 * 3600)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_agrees_with_model_long(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Long profile: many more and longer sequences, with batches and claims of 5,000 jobs."""
    run_state_machine_as_test(_machine(request, tmp_path, backend, big=True), settings=LONG)
