"""What every verb of the SQLite backend shares: the connection, the db thread, transactions,
event numbering, lane hand-off and fenced updates."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, urlsplit

from conveyor.backends.base import Backend, Lease
from conveyor.backends.doorbell import ChangeFeed, Doorbell
from conveyor.backends.sqlite.schema import apply_schema
from conveyor.errors import BackendError, ConfigError
from conveyor.model import Event, JobRecord, JobStatus, from_timestamp
from conveyor.serde import dump_json, load_meta, load_stored

T = TypeVar("T")

ACTIVE_SQL = "('queued', 'scheduled', 'running')"
# where a running job goes when its attempt is given up without a verdict (release, lease expiry)
BACK_OR_CANCELLED = (
    "status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END, "
    "finished_at = CASE WHEN cancel_requested = 1 THEN ? ELSE NULL END, due = 0"
)


class Settled(NamedTuple):
    """What a fenced transition returns: the lane it leaves and its numbered status event."""

    queue: str
    key: str | None
    id: str
    seq: int
    status: str
    attempts: int

    @property
    def event(self) -> tuple[str, int, str, int]:
        return (self.id, self.seq, self.status, self.attempts)


COLUMNS = (
    "id, task, queue, status, args, kwargs, priority, key, unique_key, attempts, max_attempts, "
    "timeout, enqueued_at, scheduled_for, started_at, finished_at, result, error, progress, retry, "
    "worker, cancel_requested, lease_token, lease_expires_at, meta"
)


def ts(d: datetime | None) -> float | None:
    """A stored timestamp (seconds since the epoch), or None."""
    return None if d is None else d.timestamp()


def record(row: sqlite3.Row | tuple[Any, ...]) -> JobRecord:
    """The job in a row selected as ``COLUMNS``."""
    return JobRecord(
        id=row[0], task=row[1], queue=row[2], status=JobStatus(row[3]),
        args=load_stored(row[4]), kwargs=load_stored(row[5]), priority=row[6], key=row[7], unique=row[8],
        attempts=row[9], max_attempts=row[10], timeout=row[11],
        enqueued_at=from_timestamp(row[12]),  # type: ignore[arg-type]
        scheduled_for=from_timestamp(row[13]), started_at=from_timestamp(row[14]),
        finished_at=from_timestamp(row[15]), result=load_stored(row[16]), error=load_stored(row[17]),
        progress=load_stored(row[18]), retry=load_stored(row[19]), worker=row[20],
        cancel_requested=bool(row[21]), lease_token=row[22],
        lease_expires_at=from_timestamp(row[23]), meta=load_meta(row[24]),
    )


class SQLiteCore(Backend):
    """The SQLite backend's plumbing; the verbs live in the mixins that subclass it."""

    poll_interval = 0.002

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or not parts.path or parts.path == "/":
            raise ConfigError(f"expected sqlite:///path.db, got {url!r}")
        self.path = Path(parts.path[1:] if parts.path.startswith("/") else parts.path)
        opts = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(opts) - {"synchronous", "busy_timeout"}
        if unknown:
            raise ConfigError(f"unknown sqlite URL options: {sorted(unknown)}")
        self.synchronous = opts.get("synchronous", "full").upper()
        if self.synchronous not in ("FULL", "NORMAL"):
            raise ConfigError("synchronous must be full or normal")
        self.busy_timeout = float(opts.get("busy_timeout", 30))
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._watch: sqlite3.Connection | None = None
        self._data_version = -1
        self._doorbell = Doorbell(self.path)  # rung from the db thread after each change
        self._changes = ChangeFeed(self._doorbell, self._data_changed, self.poll_interval)
        self._claim_mark = 0
        self._open_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=OFF")
        return conn

    async def open(self) -> None:
        with self._open_lock:
            if self._executor is not None:
                return
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        if self.path.parent != Path():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn = self._connect()

        def create() -> None:
            with self._tx(conn):
                apply_schema(conn)

        self._retry_locked(create)
        watch = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        self._watch = watch

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        conn, watch = self._conn, self._watch
        self._conn = self._watch = None

        def shut() -> None:
            if conn is not None:
                conn.close()
            if watch is not None:
                watch.close()

        await loop.run_in_executor(executor, shut)
        executor.shutdown(wait=True)
        self._changes.close(loop.remove_reader)

    # -- plumbing --------------------------------------------------------------------------
    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise BackendError("the SQLite backend is not open (use `async with queue:`)")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise BackendError(f"sqlite: {exc}") from exc

    def _retry_locked(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, waiting out a lock held past the busy timeout's first try (schema setup)."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")

    def _tx(self, conn: sqlite3.Connection) -> SQLiteCore._Tx:
        return SQLiteCore._Tx(conn)

    async def _write(self, fn: Callable[[sqlite3.Connection, float], T], *, notify: bool = True) -> T:
        """Run ``fn`` in one write transaction; wake waiters if it changed anything (and ``notify``:
        a purge, which only deletes finished jobs, wakes nobody)."""

        def work() -> tuple[T, bool]:
            assert self._conn is not None
            before = self._conn.total_changes
            with self._tx(self._conn) as conn:
                out = fn(conn, time.time())
            changed = notify and self._conn.total_changes != before
            if changed:
                self._doorbell.ring()  # other processes' waiters; on this thread, off the loop
            return out, changed

        out, changed = await self._run(work)
        if changed:
            self._changes.signal()
        return out

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            assert self._conn is not None
            return fn(self._conn)

        return await self._run(work)

    @staticmethod
    def _status_events(
        conn: sqlite3.Connection, now: float, job_ids: Sequence[str], **extra: Any
    ) -> None:
        if not job_ids:
            return
        marks = ",".join("?" * len(job_ids))
        rows = conn.execute(
            f"UPDATE conveyor_jobs SET last_event = last_event + 1 WHERE id IN ({marks}) "
            "RETURNING id, last_event, status, attempts",
            tuple(job_ids),
        ).fetchall()
        conn.executemany(
            "INSERT INTO conveyor_events VALUES (?, ?, 'status', ?, ?)",
            [
                (job_id, seq, now, dump_json({"status": status, "attempt": attempts, **extra}))
                for job_id, seq, status, attempts in rows
            ],
        )

    @staticmethod
    def _handoff(conn: sqlite3.Connection, lanes: set[tuple[str, str]]) -> None:
        """Unblock the head of each lane (the earliest unfinished job)."""
        for queue, key in lanes:
            conn.execute(
                "UPDATE conveyor_jobs SET blocked = 0 WHERE id = ("
                f"  SELECT id FROM conveyor_jobs WHERE queue = ? AND key = ? AND status IN {ACTIVE_SQL}"
                "   ORDER BY pos LIMIT 1) AND blocked = 1",
                (queue, key),
            )

    @staticmethod
    def _next_pos(conn: sqlite3.Connection, count: int) -> int:
        """Reserve ``count`` positions; return the first."""
        end: int = conn.execute(
            "UPDATE conveyor_meta SET value = value + ? WHERE name = 'pos' RETURNING value", (count,)
        ).fetchone()[0]
        return end - count + 1

    @staticmethod
    def _settle(
        conn: sqlite3.Connection, now: float, lease: Lease, sets: str, params: tuple[Any, ...]
    ) -> Settled | None:
        """Apply a fenced update to a running job and number its status event; None if fenced out."""
        row = conn.execute(
            f"UPDATE conveyor_jobs SET {sets}, lease_token = NULL, lease_expires_at = NULL, "
            "last_event = last_event + 1 WHERE id = ? AND lease_token = ? AND status = 'running' "
            "RETURNING queue, key, id, last_event, status, attempts",
            (*params, lease.job_id, lease.token),
        ).fetchone()
        return None if row is None else Settled(*row)

    @staticmethod
    def _count(conn: sqlite3.Connection, deltas: Counter[tuple[str, str]]) -> None:
        """Add ``deltas`` to the counts of (queue, status): the moves the triggers leave to us.

        The triggers count every move but the two every job makes, into ``running`` (claim) and
        into ``succeeded`` (complete): those are counted here, once per batch instead of per job.
        """
        conn.executemany(
            "INSERT INTO conveyor_counts VALUES (?, ?, ?) "
            "ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n",
            [(queue, status, n) for (queue, status), n in deltas.items() if n],
        )

    @staticmethod
    def _append_status(
        conn: sqlite3.Connection, now: float, rows: Sequence[tuple[str, int, str, int]],
        **extra: Any,
    ) -> None:
        """Insert status events already numbered: (job id, seq, status, attempt)."""
        conn.executemany(
            "INSERT INTO conveyor_events VALUES (?, ?, 'status', ?, ?)",
            [
                (job_id, seq, now, dump_json({"status": status, "attempt": attempt, **extra}))
                for job_id, seq, status, attempt in rows
            ],
        )

    # -- waiting ---------------------------------------------------------------------------
    def _data_changed(self) -> bool:
        """True when some connection committed since the last look (cheap: shared memory)."""
        if self._watch is None:
            return False
        try:
            version: int = self._watch.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.OperationalError:
            return True
        changed = version != self._data_version
        self._data_version = version
        return changed


    async def wait_for_events(self, job_id: str, after: int, timeout: float) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = self._changes.count
            found = await self.events(job_id, after)
            left = deadline - loop.time()
            if found or left <= 0:
                return found
            if not await self._changes.wait(seen, left):
                return []
            # under load changes come thousands a second: look at most every few milliseconds
            await asyncio.sleep(0.005)
