"""The SQLite schema (``schema.sql``), applied on every open; columns added since are added."""

from __future__ import annotations

import sqlite3
from importlib import resources

__all__ = ["apply_schema"]

_ADDED_COLUMNS = {"lost": "INTEGER NOT NULL DEFAULT 0"}


def _statements() -> list[str]:
    """The statements of ``schema.sql``."""
    text = resources.files("conveyor.backends.sqlite").joinpath("schema.sql").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def apply_schema(conn: sqlite3.Connection) -> None:
    """Create what is missing (inside the caller's transaction). Idempotent."""
    for statement in _statements():
        conn.execute(statement)
    # columns added after a database was first created
    have = {row[1] for row in conn.execute("PRAGMA table_info(conveyor_jobs)")}
    for column, ddl in _ADDED_COLUMNS.items():
        if column not in have:
            conn.execute(f"ALTER TABLE conveyor_jobs ADD COLUMN {column} {ddl}")
