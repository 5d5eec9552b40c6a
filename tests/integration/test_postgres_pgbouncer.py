"""Behind a real PgBouncer in transaction pooling mode, poll-only mode (``?listen=false``) works.

The test starts Debian's ``pgbouncer`` on a free port in front of the session's throwaway database
(transaction pooling: every transaction may go to another server connection, and no session state
such as LISTEN or a named prepared statement survives between them). Skipped, loudly, without the
binary, except under ``CI=true``: there it fails.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from postgres_server import ThrowawayDatabase

from conveyor import Queue

pytestmark = pytest.mark.timeout(60)

IN_CI = os.environ.get("CI", "").strip().lower() == "true"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def pgbouncer(postgres_database: ThrowawayDatabase) -> Iterator[int]:
    """A PgBouncer (transaction pooling) on a free port in front of the session's server."""
    binary = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        reason = "!!! pgbouncer is not installed (apt-get install pgbouncer); PgBouncer untested !!!"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    server = urlsplit(postgres_database.base_url)
    directory = Path(tempfile.mkdtemp(prefix="conveyor-pgbouncer-"))
    port = _free_port()
    (directory / "users.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits,jit,plan_cache_mode\n"
        f"logfile = {directory / 'pgbouncer.log'}\npidfile = {directory / 'pgbouncer.pid'}\n"
    )
    args = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer will not run as root: it switches to the postgres user
        user = pwd.getpwnam("postgres")
        os.chmod(directory, 0o755)
        for name in ("users.txt", "pgbouncer.ini"):
            os.chmod(directory / name, 0o644)
        os.chown(directory, user.pw_uid, user.pw_gid)
        args[1:1] = ["-u", "postgres"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = directory / "pgbouncer.log"
                    raise RuntimeError(
                        f"pgbouncer did not start: {log.read_text() if log.exists() else ''}"
                    ) from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


async def test_poll_only_mode_runs_jobs_through_pgbouncer_in_transaction_mode(
    pgbouncer: int, postgres_database: ThrowawayDatabase, wait_until: Any
) -> None:
    """Through PgBouncer (transaction pooling): migrate, enqueue, a worker drains them, cancel works."""
    url = (
        f"postgresql://postgres@127.0.0.1:{pgbouncer}/{postgres_database.name}"
        "?schema=bouncer&listen=false&poll=0.05&pool_max=8"
    )
    q = Queue(url)

    @q.task(name="double")
    async def double(x: int) -> int:
        await asyncio.sleep(0.001)
        return 2 * x

    @q.task(name="slow")
    async def slow() -> None:
        await asyncio.sleep(30)

    async with q:
        jobs = await q.enqueue_many([double.prepare(i) for i in range(100)])
        async with q.worker(concurrency=8):
            assert [await j.result(timeout=20) for j in jobs] == [2 * i for i in range(100)]
            running = await slow.enqueue()
            await wait_until(
                lambda: _is(running.status(), "running"), timeout=10, message="slow job running"
            )
            assert (await running.cancel()).value in ("cancelled", "running")
            await wait_until(
                lambda: _is(running.status(), "cancelled"), timeout=10,
                message="the worker saw the cancel by polling and stopped the job",
            )
        stats = await q.stats()
        assert stats["succeeded"] == 100 and stats["cancelled"] == 1, stats


async def _is(status: Any, want: str) -> bool:
    return str((await status).value) == want
