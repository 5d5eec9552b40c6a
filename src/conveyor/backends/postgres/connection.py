"""The connection pool, and the one place driver errors become :class:`BackendError`.

Every call goes through :meth:`Database.fetch` (or its siblings): a connection from the pool,
one statement, autocommit, so each of conveyor's verbs (one SQL function call) is one round
trip and one transaction. A call that failed because the connection dropped (PostgreSQL
restarting, a network blip) or because PostgreSQL chose it as a deadlock or serialization
victim is tried again briefly: the call either committed whole or not at all, and running it
again is safe (enqueue skips ids it has; fenced verbs answer False; a second claim's leases
expire and come back: at-least-once, never lost).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from conveyor.backends.postgres.options import PgOptions
from conveyor.backends.postgres.schema import VERSION, migrate, schema_version
from conveyor.errors import BackendError

__all__ = ["DRIVER_ERRORS", "TRANSIENT", "Database"]

log = logging.getLogger("conveyor.postgres")

#: errors after which the same call is tried again (the transaction did not commit, or the
#: connection is gone and with it any doubt but the reply's)
TRANSIENT = (
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress"
    OSError,
    TimeoutError,
)
#: every error the driver or the network raises
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_TRIES = 4
_FIRST_DELAY = 0.02


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Give a connection back to the pool as it is: conveyor's calls leave no session state
    (no LISTEN, no SET, no open transaction), and the driver's own reset costs a round trip."""


class Database:
    """The pool of one backend, and its schema's readiness."""

    def __init__(self, options: PgOptions, safe_url: str) -> None:
        self.options = options
        self.safe_url = safe_url
        self.pool: asyncpg.Pool | None = None
        self._connect_kwargs: dict[str, Any] = {
            # PgBouncer in transaction pooling mode cannot keep named prepared statements
            "statement_cache_size": 100 if options.listen else 0,
            "server_settings": {"application_name": "conveyor", "jit": "off"},
        }

    async def open(self) -> None:
        """Create the pool and make sure the schema is at this code's version."""
        if self.pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.options.dsn, min_size=self.options.pool_min, max_size=self.options.pool_max,
                reset=_keep_session, **self._connect_kwargs,
            )
        except DRIVER_ERRORS as exc:
            raise BackendError(f"postgresql at {self.safe_url}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                if await schema_version(conn, self.options.schema) != VERSION:
                    before, after = await migrate(conn, self.options.schema)
                    if before != after:
                        log.info(
                            "postgresql at %s: schema %r migrated from version %d to %d",
                            self.safe_url, self.options.schema, before, after,
                        )
        except BackendError:
            await pool.close()
            raise
        except DRIVER_ERRORS as exc:
            await pool.close()
            raise BackendError(f"postgresql schema setup at {self.safe_url}: {exc}") from exc
        self.pool = pool

    async def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema on a connection of its own; (version before, after)."""
        try:
            conn = await asyncpg.connect(self.options.dsn, timeout=10, **self._connect_kwargs)
        except DRIVER_ERRORS as exc:
            raise BackendError(f"postgresql at {self.safe_url}: {exc}") from exc
        try:
            return await migrate(conn, self.options.schema)
        except DRIVER_ERRORS as exc:
            raise BackendError(f"postgresql migrate at {self.safe_url}: {exc}") from exc
        finally:
            await conn.close()

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        pool, self.pool = self.pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except DRIVER_ERRORS:
                pool.terminate()

    async def connect(self) -> asyncpg.Connection:
        """A connection of its own (not pooled), for LISTEN."""
        conn: asyncpg.Connection = await asyncpg.connect(
            self.options.dsn, timeout=10,
            **{**self._connect_kwargs, "server_settings": {
                "application_name": f"conveyor-listen:{self.options.schema}", "jit": "off",
            }},
        )
        return conn

    def _opened(self) -> asyncpg.Pool:
        if self.pool is None:
            raise BackendError("the PostgreSQL backend is not open (use `async with queue:`)")
        return self.pool

    async def fetch(self, what: str, query: str, *args: Any) -> list[asyncpg.Record]:
        """Rows of one statement; ``what`` names the verb in errors."""
        pool = self._opened()
        delay = _FIRST_DELAY
        for attempt in range(_TRIES):
            try:
                rows: list[asyncpg.Record] = await pool.fetch(query, *args)
                return rows
            except TRANSIENT as exc:
                if attempt == _TRIES - 1:
                    raise BackendError(f"postgresql {what}: {exc}") from exc
                log.debug("postgresql %s: %s; trying again", what, exc)
                await asyncio.sleep(delay)
                delay *= 4
            except asyncpg.PostgresError as exc:
                raise BackendError(f"postgresql {what}: {exc}") from exc
        raise AssertionError("unreachable")

    async def fetchval(self, what: str, query: str, *args: Any) -> Any:
        """The first value of the first row (None without rows)."""
        rows = await self.fetch(what, query, *args)
        return rows[0][0] if rows else None
