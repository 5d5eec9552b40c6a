"""Throwaway PostgreSQL for tests and benchmarks: a database on the shared server, dropped after.

``ThrowawayDatabase`` creates ``conveyor_test_<random>`` on the server at ``base_url`` (by default
the machine's PostgreSQL on 127.0.0.1:5432) and drops it, with whatever connections are left, at
the end. Tests isolate themselves further with a fresh schema each (``?schema=`` in the URL).
Restart tests never touch this server: they start a cluster of their own (``tests/pg_cluster.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["DEFAULT_URL", "ThrowawayDatabase", "with_database"]

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_database(url: str, database: str) -> str:
    """``url`` pointing at ``database`` instead (query options kept)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


class ThrowawayDatabase:
    """``CREATE DATABASE`` on enter, ``DROP DATABASE ... WITH (FORCE)`` on exit."""

    def __init__(self, base_url: str = DEFAULT_URL, prefix: str = "conveyor_test") -> None:
        self.base_url = base_url
        self.name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.url = with_database(base_url, self.name)

    def schema_url(self, schema: str | None = None, **options: str) -> str:
        """A URL of this database with conveyor's ``schema`` (a fresh one by default)."""
        query = {"schema": schema or f"t_{uuid.uuid4().hex[:12]}", **options}
        return f"{self.url}?" + "&".join(f"{k}={v}" for k, v in query.items())

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(self.base_url, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    def _run(self, statement: str) -> None:
        # a thread of its own: the caller may be inside a running event loop (a fixture)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self._admin(statement)).result()

    def __enter__(self) -> ThrowawayDatabase:
        self._run(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
