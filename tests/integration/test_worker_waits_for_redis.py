"""A CLI worker started before its Redis waits for it, and a stop signal ends the wait."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port, redis_server_binary

from conveyor import Queue

from .apps.cli_app import build
from .procs import Workers

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def port() -> int:
    """A port where no Redis listens yet."""
    if redis_server_binary() is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("CI=true and redis-server is not installed", pytrace=False)
        pytest.skip("!!! redis-server is not installed; Redis untested !!!")
    return free_port()


@pytest.fixture
def db_url(port: int) -> str:
    """The store the worker is pointed at before it exists."""
    return f"redis://127.0.0.1:{port}/0?prefix=waits"


async def test_a_worker_started_before_redis_waits_for_it_then_works(
    port: int, db_url: str, workers: Workers, tmp_path: Path
) -> None:
    """The worker logs that Redis is unreachable, keeps trying, and runs jobs once it is up."""
    proc = workers.start("--concurrency", "2")
    await proc.wait_output("backend not reachable", 30)
    assert proc.alive
    with RedisServer(tmp_path / "redis", port=port):
        queue: Queue = build(db_url)
        async with queue:
            job = await queue.tasks["tick"].enqueue(7)
            assert await job.result(timeout=30) == 7
        proc.signal(signal.SIGTERM)
        assert await proc.wait_exit(20) == 0


async def test_a_stop_signal_ends_the_wait_for_redis(workers: Workers) -> None:
    """SIGTERM while the backend is unreachable: the worker exits at once, with status 0."""
    proc = workers.start("--concurrency", "2")
    await proc.wait_output("backend not reachable", 30)
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(10) == 0
