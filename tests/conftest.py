"""Shared fixtures: one fresh, isolated queue per test on every backend, and a deadline poller.

Backends are listed in ``BACKENDS``: a name and a factory that returns the URL of a fresh, empty
store for one test. Adding Redis or PostgreSQL is one factory, for example::

    def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> str:
        base = require_server("CONVEYOR_TEST_REDIS_URL", "redis://localhost:6379/0")
        return f"{base}?prefix=test-{uuid.uuid4().hex}"   # own key prefix per test

    BACKENDS["redis"] = _redis

A backend that needs a server skips the test, loudly, when the server is not reachable, except
when ``CI=true``: there a missing server fails the test instead of hiding it.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

try:  # the package may not be installed into the venv yet; test the source tree then
    import conveyor  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the venv was made
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from postgres_server import DEFAULT_URL as POSTGRES_URL  # tests/ is on sys.path
from postgres_server import ThrowawayDatabase
from redis_server import RedisServer, redis_server_binary
from waiting import wait_until

if TYPE_CHECKING:
    from conveyor import Queue

IN_CI = os.environ.get("CI", "").strip().lower() == "true"

#: seconds a conformance test may take before pytest-timeout stops it
CONFORMANCE_TIMEOUT = 30

BackendFactory = Callable[[pytest.FixtureRequest, Path], str]


def require_server(env_var: str, default_url: str) -> str:
    """Return the server URL from ``env_var`` (else ``default_url``) if something listens there.

    Skip the test when nothing answers, or fail it when running in CI (``CI=true``).
    """
    url = os.environ.get(env_var, default_url)
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port
    try:
        with socket.create_connection((host, port or 0), timeout=0.5):
            pass
    except OSError as exc:
        reason = (
            f"!!! backend server not reachable at {host}:{port} ({exc}); "
            f"set {env_var} to test this backend !!!"
        )
        if IN_CI:
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return url


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://"


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'conveyor.db'}"


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    server = request.getfixturevalue("redis_server")
    return server.url(prefix=f"test-{uuid.uuid4().hex[:12]}")  # own key prefix per test


def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    database: ThrowawayDatabase = request.getfixturevalue("postgres_database")
    return database.schema_url()  # own schema per test, in the session's throwaway database


#: every backend the conformance suite runs against; add a server backend with one factory
BACKENDS: dict[str, BackendFactory] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "postgresql": _postgresql,
}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway ``redis-server`` on a free port for the whole session (never a shared one).

    Skips, loudly, when ``redis-server`` is not installed, except under ``CI=true``: there it fails.
    """
    if redis_server_binary() is None:
        reason = "!!! redis-server is not installed (apt-get install redis-server); Redis untested !!!"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[ThrowawayDatabase]:
    """A throwaway database on the local PostgreSQL server for the whole session, dropped after.

    The server is ``$CONVEYOR_TEST_POSTGRES_URL`` (default: 127.0.0.1:5432, user postgres);
    skips, loudly, when nothing answers there, except under ``CI=true``: there it fails.
    """
    base = require_server("CONVEYOR_TEST_POSTGRES_URL", POSTGRES_URL)
    with ThrowawayDatabase(base) as database:
        yield database


#: backends whose jobs survive closing and reopening the store (see ``QueueFactory.durable``)
DURABLE = {"sqlite", "redis", "postgresql"}


class QueueFactory:
    """``make_queue(name="default") -> Queue``: queues on this test's fresh store.

    Every queue made in one test gets the same URL: for SQLite (and server backends) they share
    one store; ``memory://`` keeps one store per Queue object.
    """

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self.durable = backend in DURABLE
        self.made: list[Queue] = []

    def __call__(self, name: str = "default") -> Queue:
        from conveyor import Queue  # imported here so a broken package fails tests, not collection

        q = Queue(self.url, name=name)
        self.made.append(q)
        return q

    async def close_all(self) -> None:
        """Close every queue made, newest first."""
        for q in reversed(self.made):
            await q.close()


@pytest.fixture(params=list(BACKENDS))
async def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueFactory]:
    """A :class:`QueueFactory` on a fresh store of each backend; closes its queues after the test."""
    factory = QueueFactory(request.param, BACKENDS[request.param](request, tmp_path))
    yield factory
    await factory.close_all()


@pytest.fixture
def queue(make_queue: QueueFactory) -> Queue:
    """One fresh queue named "default" on the backend under test."""
    return make_queue()


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Awaitable[Any]]:
    """The :func:`wait_until` poller, for test modules (conftest is not importable by name)."""
    return wait_until


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every conformance test a short timeout unless it sets its own."""
    for item in items:
        if "conformance" in item.path.parts and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CONFORMANCE_TIMEOUT))
