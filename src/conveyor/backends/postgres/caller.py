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


def caller_fetch(connection: object) -> Fetch:
    """A Fetch that runs on ``connection``'s open transaction; ConfigError for any other kind,
    or when its transaction is not open."""
    module = type(connection).__module__
    if module.startswith("sqlalchemy."):
        return _sqlalchemy(connection)
    if module.startswith("asyncpg."):
        return _asyncpg(connection)
    if module.startswith("psycopg.") or module == "psycopg":
        return _psycopg(connection)
    raise ConfigError(f"connection= takes {_KINDS}; got {_kind(connection)}")


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
    if not hasattr(conn, "info") or not callable(getattr(conn, "cursor", None)):
        raise ConfigError(f"connection= takes {_KINDS}; got {_kind(conn)}")
    if type(conn).__name__ != "AsyncConnection":
        raise ConfigError(
            f"connection= takes a psycopg AsyncConnection (conveyor is async); got {_kind(conn)}"
        )
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


def _sqlalchemy(session_or_conn: Any) -> Fetch:
    name = type(session_or_conn).__name__
    if name not in ("AsyncSession", "AsyncConnection") or not callable(
        getattr(session_or_conn, "in_transaction", None)
    ):
        raise ConfigError(
            f"connection= takes {_KINDS}; got {_kind(session_or_conn)} (a synchronous Session "
            "or Connection cannot be awaited)"
        )
    if name == "AsyncConnection" and session_or_conn.closed:
        raise _not_open("SQLAlchemy AsyncConnection", "it is closed")
    if not session_or_conn.in_transaction():
        raise _not_open(
            f"SQLAlchemy {name}",
            "enqueue inside `async with session.begin():` (or `conn.begin()`), or after a "
            "statement or flush of the transaction",
        )
    bind = session_or_conn.get_bind() if name == "AsyncSession" else session_or_conn
    dialect = bind.dialect
    if dialect.name != "postgresql" or dialect.driver not in ("asyncpg", "psycopg"):
        raise ConfigError(
            f"connection=: a SQLAlchemy {name} on {dialect.name}+{dialect.driver}; conveyor's "
            "jobs live in PostgreSQL, through the asyncpg or psycopg dialect"
        )
    placeholder = "%s" if dialect.paramstyle in ("format", "pyformat") else None

    async def fetch(sql: str, params: Sequence[Any]) -> Sequence[Row]:
        conn = await session_or_conn.connection() if name == "AsyncSession" else session_or_conn
        statement = sql if placeholder is None else _PLACEHOLDER.sub(placeholder, sql)
        result = await conn.exec_driver_sql(statement, tuple(params))
        rows: Sequence[Row] = result.fetchall()
        return rows

    return fetch
