"""Redis for the benchmarks: a throwaway ``redis-server`` on a free port, never a shared one.

``run.py`` uses :func:`fresh_redis` as the store of its ``redis`` target; ``peers/compare.py``
runs conveyor and its peers against one :func:`redis_server` in turn.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:  # the tests' server helper, shared rather than copied
    sys.path.insert(0, str(ROOT / "tests"))

from redis_server import RedisServer, redis_server_binary  # noqa: E402

__all__ = ["fresh_redis", "redis_server", "redis_server_binary"]


@contextmanager
def redis_server(*, aof: bool = False) -> Iterator[RedisServer]:
    """A ``redis-server`` in a temporary directory for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-redis-") as tmp, \
            RedisServer(Path(tmp), aof=aof) as server:
        yield server


@contextmanager
def fresh_redis() -> Iterator[str]:
    """The URL of an empty Redis (a new server, AOF off as in a typical cache-style setup)."""
    with redis_server() as server:
        yield server.url()
