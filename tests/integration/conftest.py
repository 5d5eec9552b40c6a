"""Fixtures for process-level tests: a SQLite file per test, its app queue, and CLI workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conveyor import Queue

from .apps import cli_app
from .procs import Workers


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite store for this test."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def task_log(tmp_path: Path) -> Path:
    """The file the app's tasks append their lines to."""
    return tmp_path / "tasks.log"


@pytest.fixture
async def app_queue(db_url: str) -> AsyncIterator[Queue]:
    """The CLI app's queue on this test's store, opened, as the enqueueing side sees it."""
    queue = cli_app.build(db_url)
    async with queue:
        yield queue


@pytest.fixture
def workers(tmp_path: Path, db_url: str, task_log: Path) -> Iterator[Workers]:
    """Start CLI workers on this test's store; any still running at the end are killed."""
    started = Workers(tmp_path, db_url, task_log)
    yield started
    started.destroy_all()
