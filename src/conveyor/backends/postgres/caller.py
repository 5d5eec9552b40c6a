"""Enqueue on the application's own connection, inside its open transaction (``connection=``).

:func:`caller_fetch` turns a connection of the application into a :data:`~.transitions.Fetch`
after checking, before anything is written, that it is a kind conveyor speaks and that its
transaction is open. Kinds are told apart by the module of the connection's class, so nothing
here imports SQLAlchemy or psycopg (only a connection of theirs reaches their code):

* a SQLAlchemy ``AsyncSession`` or ``AsyncConnection`` on PostgreSQL (asyncpg or psycopg
  dialect): the statement goes through SQLAlchemy (``exec_driver_sql``), so it runs in the
  transaction SQLAlchemy manages, never beside it;
* a raw asyncpg ``Connection`` (or a pool's connection);
* a raw psycopg 3 ``AsyncConnection``.

Nothing here commits: the jobs exist, and workers are woken (NOTIFY), when the caller commits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from conveyor.backends.postgres.records import Row
from conveyor.backends.postgres.transitions import Fetch
from conveyor.errors import ConfigError

__all__ = ["caller_fetch"]

_PLACEHOLDER = re.compile(r"\$\d+")
_KINDS = (
    "a SQLAlchemy AsyncSession or AsyncConnection (asyncpg or psycopg dialect), an asyncpg "
    "connection, or a psycopg 3 AsyncConnection"
)


def _kind(connection: object) -> str:
    cls = type(connection)
    return f"{cls.__module__}.{cls.__qualname__}"


def _not_open(what: str, how: str) -> ConfigError:
    return ConfigError(
        f"connection=: the {what} has no open transaction, so the job could not share its "
        f"commit; {how}"
    )


def _family(connection: object) -> tuple[str, set[str]]:
    """The library the connection's class (or a base of it: an app may subclass) comes from,
    and the names of its classes there."""
    for cls in type(connection).__mro__:
        root = cls.__module__.split(".")[0]
        if root in ("sqlalchemy", "asyncpg", "psycopg"):
            names = {c.__name__ for c in type(connection).__mro__ if c.__module__.startswith(root)}
            return root, names
    return "", set()


def caller_fetch(connection: object) -> Fetch:
    """A Fetch that runs on ``connection``'s open transaction; ConfigError for any other kind,
    or when its transaction is not open."""
    library, names = _family(connection)
    if library == "sqlalchemy" and names & {"AsyncSession", "AsyncConnection"}:
        return _sqlalchemy(connection, "AsyncSession" if "AsyncSession" in names else "AsyncConnection")
    if library == "asyncpg":
        return _asyncpg(connection)
    if library == "psycopg" and "AsyncConnection" in names:
        return _psycopg(connection)
    if library == "psycopg" and "Connection" in names:
        raise ConfigError(
            f"connection= takes a psycopg AsyncConnection (conveyor is async); got {_kind(connection)}"
        )
    hint = " (a synchronous Session or Connection cannot be awaited)" if library == "sqlalchemy" else ""
    raise ConfigError(f"connection= takes {_KINDS}; got {_kind(connection)}{hint}")


def _asyncpg(conn: Any) -> Fetch:
    if not callable(getattr(conn, "is_in_transaction", None)):
        raise ConfigError(f"connection= takes {_KINDS}; got {_kind(conn)}")
    if conn.is_closed() or not conn.is_in_transaction():
        raise _not_open("asyncpg connection", "enqueue inside `async with conn.transaction():`")

    async def fetch(sql: str, params: Sequence[Any]) -> Sequence[Row]:
        rows: Sequence[Row] = await conn.fetch(sql, *params)
        return rows

    return fetch


def _psycopg_open(conn: Any) -> bool:
    from psycopg.pq import TransactionStatus  # a psycopg connection: psycopg is installed

    return bool(conn.info.transaction_status == TransactionStatus.INTRANS)


def _psycopg(conn: Any) -> Fetch:
    if conn.closed or not _psycopg_open(conn):
        raise _not_open(
            "psycopg connection",
            "enqueue inside `async with conn.transaction():`, or after a statement of the "
            "transaction (a connection in autocommit mode has none)",
        )

    async def fetch(sql: str, params: Sequence[Any]) -> Sequence[Row]:
        from psycopg.rows import tuple_row

        # a cursor of our own reads rows by position, whatever row factory the caller set
        async with conn.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute(_PLACEHOLDER.sub("%s", sql), list(params))
            rows: Sequence[Row] = await cursor.fetchall()
            return rows

    return fetch


def _sqlalchemy(session_or_conn: Any, name: str) -> Fetch:
    if name == "AsyncConnection" and session_or_conn.closed:
        raise _not_open("SQLAlchemy AsyncConnection", "it is closed")
    if not session_or_conn.in_transaction():
        raise _not_open(
            f"SQLAlchemy {name}",
            "enqueue inside `async with session.begin():` (or `conn.begin()`), or after a "
            "statement or flush of the transaction",
        )

    async def fetch(sql: str, params: Sequence[Any]) -> Sequence[Row]:
        # the session's connection of its open transaction (no new transaction is begun)
        conn = await session_or_conn.connection() if name == "AsyncSession" else session_or_conn
        dialect = conn.dialect
        if dialect.name != "postgresql" or dialect.driver not in ("asyncpg", "psycopg"):
            raise ConfigError(
                f"connection=: a SQLAlchemy {name} on {dialect.name}+{dialect.driver}; conveyor's "
                "jobs live in PostgreSQL, through the asyncpg or psycopg dialect"
            )
        if dialect.paramstyle in ("format", "pyformat"):  # psycopg: %s; asyncpg: $1 as written
            sql = _PLACEHOLDER.sub("%s", sql)
        result = await conn.exec_driver_sql(sql, tuple(params))
        rows: Sequence[Row] = result.fetchall()
        return rows

    return fetch
