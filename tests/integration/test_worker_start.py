"""A worker whose start failed can be started again, and stopping it is harmless."""

from __future__ import annotations

import socket

import pytest

from conveyor import Queue
from conveyor.errors import BackendError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_failed_start_leaves_the_worker_stoppable_and_startable() -> None:
    """start() against a backend that is down raises; stop() returns; a second start() raises too."""
    queue = Queue(f"redis://127.0.0.1:{_closed_port()}/0")
    worker = queue.worker()
    with pytest.raises(BackendError):
        await worker.start()
    await worker.stop()  # nothing to stop: returns at once, without an IndexError
    with pytest.raises(BackendError):
        await worker.start()  # tried again, not silently "started"
    assert worker.running == 0
