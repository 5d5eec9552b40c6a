"""Small helpers the conformance tests share (waiting is in ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from conveyor import Queue
from conveyor.backends.base import JobFilter

RESULT_TIMEOUT = 10.0
"""Seconds any test waits for a job's result before calling it a failure."""


async def stored_jobs(queue: Queue) -> list[Any]:
    """Every job record the queue's backend holds (all queues, all statuses)."""
    await queue.open()
    return await queue.backend.list_jobs(JobFilter(limit=10_000))


async def assert_nothing_written(queue: Queue) -> None:
    """The backend holds no job at all: every status counts zero and listing is empty."""
    await queue.open()
    stats = await queue.backend.stats()
    assert set(stats.values()) == {0}, stats
    assert await stored_jobs(queue) == []


async def total_jobs(queue: Queue) -> int:
    """How many jobs the backend holds, by its own stats."""
    await queue.open()
    return sum((await queue.backend.stats()).values())


class Gate:
    """A one-shot gate a task body waits on, from the loop (``await gate.wait()``) or a thread.

    ``entered`` counts bodies that reached the gate; ``opened`` lets them through.
    """

    def __init__(self) -> None:
        self._opened = threading.Event()
        self._entered = 0
        self._lock = threading.Lock()

    @property
    def entered(self) -> int:
        """How many task bodies reached the gate so far."""
        with self._lock:
            return self._entered

    def open(self) -> None:
        """Let every waiting body (and every later one) through."""
        self._opened.set()

    async def wait(self, timeout: float = RESULT_TIMEOUT) -> None:
        """From an async task: arrive, then wait until opened (fail after ``timeout``)."""
        with self._lock:
            self._entered += 1
        deadline = time.monotonic() + timeout
        while not self._opened.is_set():
            if time.monotonic() > deadline:
                raise AssertionError("gate never opened")
            await asyncio.sleep(0.005)

    def wait_sync(self, timeout: float = RESULT_TIMEOUT) -> None:
        """From a thread: arrive, then wait until opened (fail after ``timeout``)."""
        with self._lock:
            self._entered += 1
        if not self._opened.wait(timeout):
            raise AssertionError("gate never opened")
