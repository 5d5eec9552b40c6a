"""conveyor's own schema: versioned migrations (``sql/<version>/*.sql``), applied under a lock.

``migrate`` runs in one transaction that first takes a transaction-level advisory lock named
after the schema, so any number of workers starting at once take turns: the first creates or
upgrades the schema, the others find it done. The version table ``<schema>.migrations`` holds
one row per applied version. Every step is idempotent: running ``migrate`` again changes nothing.
A schema at a version newer than this code knows is refused (upgrade conveyor first).

SQL files are templates: ``@s@`` is the quoted schema, ``@wake@`` and ``@cancel@`` the NOTIFY
channels (as string literals). Nothing user-supplied reaches them but the schema name, which
the URL parser allows only as ``[a-z_][a-z0-9_]*``.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import TYPE_CHECKING, Any

from conveyor.errors import BackendError

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    #: a connection of its own, or one lent by the pool
    Conn = asyncpg.Connection | PoolConnectionProxy[Any]

__all__ = ["VERSION", "channels", "migrate", "render", "schema_version"]


def channels(schema: str) -> tuple[str, str]:
    """The NOTIFY channels of ``schema``: (wake-ups for new work, cancel requests)."""
    return f"{schema}.wake", f"{schema}.cancel"


@functools.cache
def _migrations() -> tuple[tuple[int, str], ...]:
    """(version, SQL template) for every version this code knows, oldest first."""
    folder = resources.files("conveyor.backends.postgres").joinpath("sql")
    out: list[tuple[int, str]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.is_dir() or not entry.name.isdigit():
            continue
        files = sorted((f for f in entry.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
        out.append((int(entry.name), "\n".join(f.read_text(encoding="utf-8") for f in files)))
    return tuple(out)


VERSION = _migrations()[-1][0]


def render(template: str, schema: str) -> str:
    """The SQL of ``template`` for ``schema``."""
    wake, cancel = channels(schema)
    return (
        template.replace("@s@", f'"{schema}"')
        .replace("@wake@", f"'{wake}'")
        .replace("@cancel@", f"'{cancel}'")
    )


def _lock_key(schema: str) -> int:
    """The advisory lock that serializes migrations of ``schema`` (a signed 64-bit number)."""
    digest = hashlib.sha1(f"conveyor migrate {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def schema_version(conn: Conn, schema: str) -> int:
    """The version ``schema`` is at: 0 when conveyor's tables are not there yet."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}".migrations')
    if not exists:
        return 0
    found = await conn.fetchval(f'SELECT coalesce(max(version), 0) FROM "{schema}".migrations')
    assert isinstance(found, int)
    return found


async def migrate(conn: Conn, schema: str) -> tuple[int, int]:
    """Create or upgrade ``schema`` to :data:`VERSION`; return (version before, version after).

    ``conn`` must not be in a transaction: this runs one of its own.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".migrations ('
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = await schema_version(conn, schema)
        if before > VERSION:
            raise BackendError(
                f"the PostgreSQL schema {schema!r} is at version {before}, made by a newer "
                f"conveyor (this one knows up to {VERSION}): upgrade conveyor to use it"
            )
        for version, template in _migrations():
            if version > before:
                await conn.execute(render(template, schema))
                await conn.execute(
                    f'INSERT INTO "{schema}".migrations (version) VALUES ($1)', version
                )
    return before, VERSION
