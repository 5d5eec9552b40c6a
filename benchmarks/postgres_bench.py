"""PostgreSQL for the benchmarks: a throwaway database on the local server, dropped afterwards.

``run.py`` uses :func:`fresh_postgres` as the store of its ``postgresql`` target. The server is
``$CONVEYOR_BENCH_POSTGRES_URL`` (default: the machine's PostgreSQL on 127.0.0.1:5432).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:  # the tests' server helper, shared rather than copied
    sys.path.insert(0, str(ROOT / "tests"))

from postgres_server import DEFAULT_URL, ThrowawayDatabase  # noqa: E402

__all__ = ["fresh_postgres", "postgres_reachable", "postgres_url"]


def postgres_url() -> str:
    """The server the benchmarks make their databases on."""
    return os.environ.get("CONVEYOR_BENCH_POSTGRES_URL", DEFAULT_URL)


def postgres_reachable() -> bool:
    """True when something accepts connections at :func:`postgres_url`."""
    parts = urlsplit(postgres_url())
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 5432), 0.5):
            return True
    except OSError:
        return False


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """The URL of an empty conveyor schema in a new database, dropped at the end."""
    with ThrowawayDatabase(postgres_url(), prefix="conveyor_bench") as database:
        yield database.schema_url(schema="conveyor")
