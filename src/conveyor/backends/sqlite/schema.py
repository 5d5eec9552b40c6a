"""The SQLite schema (``schema.sql``), applied on every open, and the upgrade of older databases.

Opening runs, in one ``BEGIN IMMEDIATE`` transaction (so processes opening at once take turns,
and the second finds the work done): the tables; the columns added since a database was first
created; the migrations its ``schema`` version in ``conveyor_meta`` has not had yet; the indexes and
triggers; then the new version. Every step is idempotent.

Versions: 1 (or no version row) is the first schema; 2 replaced the claim index (which also held
scheduled jobs not yet due, so claims walked past them) by ``conveyor_jobs_ready`` and
``conveyor_jobs_due``, and the position index by a (queue, status, position) list index, and added the
``conveyor_counts`` table that triggers keep for ``stats()``. The ``meta`` column (a job's metadata)
came later without a new version: it is added on open, and older code, which does not select it,
runs on such a database as before (jobs it enqueues have no meta). A process still running the code
of version 1 cannot open a database at version 2 (the names of the indexes it would create stay
taken), and one still running when the upgrade happens can no longer claim: stop the workers of
the old version before the new one opens the database, as a job it finished afterwards would be
missing from the counts.
"""

from __future__ import annotations

import sqlite3
from importlib import resources

from conveyor.errors import BackendError

__all__ = ["VERSION", "apply_schema"]

VERSION = 2
# columns added since a database was first made, added on open whatever its version: code that
# does not know a column leaves it alone (``meta``, NULL when a job has none, needs no version)
_ADDED_COLUMNS = {
    "lost": "INTEGER NOT NULL DEFAULT 0",
    "due": "INTEGER NOT NULL DEFAULT 0",
    "meta": "TEXT",
}
_INDEXES_MARK = "-- indexes\n"


def _statements(text: str) -> list[str]:
    """Complete SQL statements in ``text`` (triggers hold ';' inside), comments left out."""
    out: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"incomplete statement in schema.sql: {current.strip()[:80]!r}")
    return out


def _parts() -> tuple[list[str], list[str]]:
    """The statements of ``schema.sql``: tables, then indexes and triggers."""
    text = resources.files("conveyor.backends.sqlite").joinpath("schema.sql").read_text()
    tables, indexes = text.split(_INDEXES_MARK, 1)
    return _statements(tables), _statements(indexes)


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Drop the indexes version 2 replaced and count the jobs stored so far."""
    conn.execute("DROP INDEX IF EXISTS conveyor_jobs_claim")
    conn.execute("DROP INDEX IF EXISTS conveyor_jobs_pos")
    # the old names stay taken, so code of version 1 can no longer open the database (its
    # CREATE INDEX IF NOT EXISTS fails on them) and write moves the counts would not see
    for name in ("conveyor_jobs_claim", "conveyor_jobs_pos"):
        conn.execute(
            f"CREATE VIEW IF NOT EXISTS {name} AS "
            "SELECT 'this database is at schema version 2 or later: upgrade conveyor' AS reason"
        )
    conn.execute("DELETE FROM conveyor_counts")
    conn.execute(
        "INSERT INTO conveyor_counts (queue, status, n) "
        "SELECT queue, status, COUNT(*) FROM conveyor_jobs GROUP BY queue, status"
    )



_MIGRATIONS = {2: _migrate_to_2}


def apply_schema(conn: sqlite3.Connection) -> None:
    """Create what is missing and upgrade an older database (inside the caller's transaction)."""
    tables, indexes = _parts()
    for statement in tables:
        conn.execute(statement)
    have = {row[1] for row in conn.execute("PRAGMA table_info(conveyor_jobs)")}
    for column, ddl in _ADDED_COLUMNS.items():
        if column not in have:
            conn.execute(f"ALTER TABLE conveyor_jobs ADD COLUMN {column} {ddl}")
    row = conn.execute("SELECT value FROM conveyor_meta WHERE name = 'schema'").fetchone()
    version = 1 if row is None else int(row[0])
    if version > VERSION:
        raise BackendError(
            f"this SQLite database has schema version {version}, made by a newer conveyor "
            f"(this one knows up to {VERSION}): upgrade conveyor to open it"
        )
    for target in range(version + 1, VERSION + 1):
        _MIGRATIONS[target](conn)
    for statement in indexes:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO conveyor_meta VALUES ('schema', ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (VERSION,),
    )
