"""``sqlite:///path.db``: the embedded default. Durable, and safe for several processes on one machine.

Every verb is one ``BEGIN IMMEDIATE`` transaction run on a dedicated thread (the driver blocks, the
event loop must not). WAL lets readers run beside the single writer; the busy timeout makes writers
queue up instead of raising "database is locked". Workers in other processes notice commits through
``PRAGMA data_version``, a read of shared memory, so an idle worker costs next to nothing.

Lanes are kept by a ``blocked`` flag: a keyed job is stored blocked when its lane already holds an
unfinished job, and the lane's next job is unblocked when its head finishes. Claim then reads a
single partial index of claimable jobs in (priority, position) order.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, urlsplit

from conveyor.backends.base import Ack, Backend, JobFilter, Lease, RenewResult, worker_lost
from conveyor.backends.doorbell import ChangeFeed, Doorbell
from conveyor.errors import BackendError, ConfigError
from conveyor.model import (
    ErrorInfo,
    Event,
    JobRecord,
    JobStatus,
    from_timestamp,
)
from conveyor.serde import dump_json, load_stored

__all__ = ["SQLiteBackend"]

T = TypeVar("T")

def _schema() -> list[str]:
    """The statements of ``sql/sqlite_schema.sql``."""
    text = resources.files("conveyor.backends").joinpath("sql", "sqlite_schema.sql").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]



_ADDED_COLUMNS = {"lost": "INTEGER NOT NULL DEFAULT 0"}
_ACTIVE_SQL = "('queued', 'scheduled', 'running')"
# where a running job goes when its attempt is given up without a verdict (release, lease expiry)
_BACK_OR_CANCELLED = (
    "status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END, "
    "finished_at = CASE WHEN cancel_requested = 1 THEN ? ELSE NULL END"
)
class _Settled(NamedTuple):
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


_COLUMNS = (
    "id, task, queue, status, args, kwargs, priority, key, unique_key, attempts, max_attempts, "
    "timeout, enqueued_at, scheduled_for, started_at, finished_at, result, error, progress, retry, "
    "worker, cancel_requested, lease_token, lease_expires_at"
)




def _ts(d: datetime | None) -> float | None:
    return None if d is None else d.timestamp()


def _record(row: sqlite3.Row | tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        id=row[0], task=row[1], queue=row[2], status=JobStatus(row[3]),
        args=load_stored(row[4]), kwargs=load_stored(row[5]), priority=row[6], key=row[7], unique=row[8],
        attempts=row[9], max_attempts=row[10], timeout=row[11],
        enqueued_at=from_timestamp(row[12]),  # type: ignore[arg-type]
        scheduled_for=from_timestamp(row[13]), started_at=from_timestamp(row[14]),
        finished_at=from_timestamp(row[15]), result=load_stored(row[16]), error=load_stored(row[17]),
        progress=load_stored(row[18]), retry=load_stored(row[19]), worker=row[20],
        cancel_requested=bool(row[21]), lease_token=row[22],
        lease_expires_at=from_timestamp(row[23]),
    )


class SQLiteBackend(Backend):
    """Jobs in one SQLite file (WAL), shared by every process on the machine that opens it.

    URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; query options
    ``synchronous=full|normal`` (default full: a committed job survives power loss) and
    ``busy_timeout`` in seconds (default 30).
    """

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
                for statement in _schema():
                    conn.execute(statement)
                # columns added after a database was first created
                have = {row[1] for row in conn.execute("PRAGMA table_info(conveyor_jobs)")}
                for column, ddl in _ADDED_COLUMNS.items():
                    if column not in have:
                        conn.execute(f"ALTER TABLE conveyor_jobs ADD COLUMN {column} {ddl}")

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

    def _tx(self, conn: sqlite3.Connection) -> SQLiteBackend._Tx:
        return SQLiteBackend._Tx(conn)

    async def _write(self, fn: Callable[[sqlite3.Connection, float], T]) -> T:
        def work() -> tuple[T, bool]:
            assert self._conn is not None
            before = self._conn.total_changes
            with self._tx(self._conn) as conn:
                out = fn(conn, time.time())
            changed = self._conn.total_changes != before
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
    def _events(
        conn: sqlite3.Connection, now: float, rows: Sequence[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """Append events (job_id, type, data), numbering them per job."""
        for job_id, type_, data in rows:
            seq = conn.execute(
                "UPDATE conveyor_jobs SET last_event = last_event + 1 WHERE id = ? RETURNING last_event",
                (job_id,),
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO conveyor_events VALUES (?, ?, ?, ?, ?)",
                (job_id, seq, type_, now, dump_json(data)),
            )

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
                f"  SELECT id FROM conveyor_jobs WHERE queue = ? AND key = ? AND status IN {_ACTIVE_SQL}"
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

    # -- transitions -----------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        rows = [
            (job, dump_json(job.args), dump_json(job.kwargs), dump_json(job.retry) if job.retry else None)
            for job in jobs
        ]

        def work(conn: sqlite3.Connection, now: float) -> list[JobRecord]:
            out: list[JobRecord] = []
            pos = self._next_pos(conn, len(rows))
            added: list[str] = []
            for job, args, kwargs, retry in rows:
                if job.unique is not None:
                    row = conn.execute(
                        f"SELECT {_COLUMNS} FROM conveyor_jobs WHERE queue = ? AND unique_key = ? "
                        f"AND status IN {_ACTIVE_SQL}",
                        (job.queue, job.unique),
                    ).fetchone()
                    if row is not None:
                        out.append(_record(row))
                        continue
                if job.supersede and job.key is not None:
                    gone = [r[0] for r in conn.execute(
                        "UPDATE conveyor_jobs SET status = 'cancelled', finished_at = ? "
                        "WHERE queue = ? AND key = ? AND status IN ('queued', 'scheduled') "
                        "AND attempts = 0 RETURNING id",
                        (now, job.queue, job.key),
                    )]
                    self._status_events(conn, now, gone, reason="superseded")
                    self._handoff(conn, {(job.queue, job.key)})
                blocked = 0
                if job.key is not None:
                    blocked = int(conn.execute(
                        f"SELECT EXISTS (SELECT 1 FROM conveyor_jobs WHERE queue = ? AND key = ? "
                        f"AND status IN {_ACTIVE_SQL})",
                        (job.queue, job.key),
                    ).fetchone()[0])
                run_at = _ts(job.scheduled_for) or now
                status = JobStatus.SCHEDULED if run_at > now else JobStatus.QUEUED
                conn.execute(
                    "INSERT INTO conveyor_jobs (id, pos, task, queue, status, args, kwargs, priority, "
                    "key, unique_key, blocked, max_attempts, timeout, enqueued_at, scheduled_for, "
                    "run_at, retry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, pos, job.task, job.queue, status.value, args, kwargs, job.priority,
                     job.key, job.unique, blocked, job.max_attempts, job.timeout,
                     _ts(job.enqueued_at), _ts(job.scheduled_for), run_at, retry),
                )
                pos += 1
                added.append(job.id)
                out.append(JobRecord(
                    id=job.id, task=job.task, queue=job.queue, status=status, args=job.args,
                    kwargs=job.kwargs, priority=job.priority, key=job.key, unique=job.unique,
                    max_attempts=job.max_attempts, timeout=job.timeout,
                    enqueued_at=job.enqueued_at, scheduled_for=job.scheduled_for, retry=job.retry,
                ))
            self._status_events(conn, now, added)
            return out

        return await self._write(work)

    async def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[JobRecord]:
        if limit <= 0 or not queues:
            return []
        self._claim_mark = self._changes.count
        marks = ",".join("?" * len(queues))
        # select and take in one statement; the lease token is drawn by SQLite itself
        take = (
            "UPDATE conveyor_jobs SET status = 'running', attempts = attempts + 1, "
            "started_at = ?, finished_at = NULL, worker = ?, cancel_requested = 0, "
            "lease_token = lower(hex(randomblob(8))), lease_expires_at = ?, "
            "last_event = last_event + 1 "
            "WHERE id IN (SELECT id FROM conveyor_jobs INDEXED BY conveyor_jobs_claim "
            f"WHERE queue IN ({marks}) AND status IN ('queued', 'scheduled') AND blocked = 0 "
            "AND run_at <= ? ORDER BY priority DESC, pos LIMIT ?) "
            f"RETURNING {_COLUMNS}, last_event, priority, pos"
        )

        def work(conn: sqlite3.Connection, now: float) -> list[JobRecord]:
            rows = conn.execute(take, (now, worker, now + lease, *queues, now, limit)).fetchall()
            if not rows:
                return []
            rows.sort(key=lambda r: (-r[-2], r[-1]))
            self._append_status(
                conn, now, [(r[0], r[-3], "running", r[9]) for r in rows], worker=worker
            )
            out: list[JobRecord] = []
            for row in rows:
                try:
                    out.append(_record(row))
                except (ValueError, TypeError, KeyError) as exc:
                    self._quarantine(conn, now, row[0], exc)
            return out

        return await self._write(work)

    @classmethod
    def _quarantine(cls, conn: sqlite3.Connection, now: float, job_id: str, exc: Exception) -> None:
        """Fail a stored job that cannot be read back, so it never blocks or spins a worker."""
        error = {
            "type": "MalformedJob",
            "message": f"the stored job cannot be decoded: {type(exc).__name__}: {exc}",
            "traceback": "",
        }
        row = conn.execute(
            "UPDATE conveyor_jobs SET status = 'failed', finished_at = ?, error = ?, "
            "lease_token = NULL, lease_expires_at = NULL WHERE id = ? RETURNING queue, key",
            (now, dump_json(error), job_id),
        ).fetchone()
        cls._status_events(conn, now, [job_id], error=error)
        if row is not None and row[1] is not None:
            cls._handoff(conn, {(row[0], row[1])})

    async def renew(self, leases: Sequence[Lease], lease: float) -> RenewResult:
        if not leases:
            return RenewResult(frozenset(), frozenset())

        def work(conn: sqlite3.Connection, now: float) -> RenewResult:
            held: set[str] = set()
            cancel: set[str] = set()
            for item in leases:
                row = conn.execute(
                    "UPDATE conveyor_jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? "
                    "AND status = 'running' RETURNING cancel_requested",
                    (now + lease, item.job_id, item.token),
                ).fetchone()
                if row is not None:
                    held.add(item.job_id)
                    if row[0]:
                        cancel.add(item.job_id)
            lost = frozenset(item.job_id for item in leases) - held
            return RenewResult(lost, frozenset(cancel))

        return await self._write(work)

    @staticmethod
    def _settle(
        conn: sqlite3.Connection, now: float, lease: Lease, sets: str, params: tuple[Any, ...]
    ) -> _Settled | None:
        """Apply a fenced update to a running job and number its status event; None if fenced out."""
        row = conn.execute(
            f"UPDATE conveyor_jobs SET {sets}, lease_token = NULL, lease_expires_at = NULL, "
            "last_event = last_event + 1 WHERE id = ? AND lease_token = ? AND status = 'running' "
            "RETURNING queue, key, id, last_event, status, attempts",
            (*params, lease.job_id, lease.token),
        ).fetchone()
        return None if row is None else _Settled(*row)

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

    async def complete(self, acks: Sequence[Ack]) -> list[bool]:
        if not acks:
            return []
        payload = [(Lease(a.job_id, a.token), dump_json(a.result)) for a in acks]

        def work(conn: sqlite3.Connection, now: float) -> list[bool]:
            out: list[bool] = []
            lanes: set[tuple[str, str]] = set()
            done: list[_Settled] = []
            for lease, result in payload:
                hit = self._settle(
                    conn, now, lease,
                    "status = 'succeeded', finished_at = ?, result = ?, error = NULL",
                    (now, result),
                )
                out.append(hit is not None)
                if hit is not None:
                    done.append(hit)
                    if hit.key is not None:
                        lanes.add((hit.queue, hit.key))
            self._append_status(conn, now, [h.event for h in done])
            self._handoff(conn, lanes)
            return out

        return await self._write(work)

    async def fail(
        self, lease: Lease, error: ErrorInfo, *, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        err = dump_json(error)

        def work(conn: sqlite3.Connection, now: float) -> bool:
            if retry_at is None:
                status = JobStatus.DEAD if dead else JobStatus.FAILED
                hit = self._settle(
                    conn, now, lease, "status = ?, finished_at = ?, error = ?",
                    (status.value, now, err),
                )
            else:
                at = retry_at.timestamp()
                status = JobStatus.SCHEDULED if at > now else JobStatus.QUEUED
                # a job asked to cancel while its attempt failed is not tried again
                hit = self._settle(
                    conn, now, lease,
                    "status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE ? END, "
                    "finished_at = CASE WHEN cancel_requested = 1 THEN ? ELSE NULL END, "
                    "scheduled_for = ?, run_at = ?, error = ?",
                    (status.value, now, at, max(at, now), err),
                )
            if hit is None:
                return False
            self._append_status(conn, now, [hit.event], error=error)
            if JobStatus(hit.status).terminal and hit.key is not None:
                self._handoff(conn, {(hit.queue, hit.key)})
            return True

        return await self._write(work)

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []

        def work(conn: sqlite3.Connection, now: float) -> list[bool]:
            out: list[bool] = []
            lanes: set[tuple[str, str]] = set()
            settled: list[_Settled] = []
            for lease in leases:
                hit = self._settle(
                    conn, now, lease,
                    f"{_BACK_OR_CANCELLED}, attempts = attempts - 1, worker = NULL, run_at = ?, "
                    "scheduled_for = NULL",
                    (now, now),
                )
                out.append(hit is not None)
                if hit is not None:
                    settled.append(hit)
                    if hit.status == "cancelled" and hit.key is not None:
                        lanes.add((hit.queue, hit.key))
            self._handoff(conn, lanes)
            self._append_status(conn, now, [h.event for h in settled], reason="released")
            return out

        return await self._write(work)

    async def cancel(
        self, job_id: str, *, lease: Lease | None = None, error: ErrorInfo | None = None
    ) -> JobRecord | None:
        def work(conn: sqlite3.Connection, now: float) -> JobRecord | None:
            if lease is not None:
                hit = self._settle(
                    conn, now, lease, "status = 'cancelled', finished_at = ?, error = ?",
                    (now, dump_json(error) if error else None),
                )
                if hit is not None:
                    self._append_status(conn, now, [hit.event])
                    if hit.key is not None:
                        self._handoff(conn, {(hit.queue, hit.key)})
            else:
                row = conn.execute(
                    "UPDATE conveyor_jobs SET status = 'cancelled', finished_at = ? WHERE id = ? "
                    "AND status IN ('queued', 'scheduled') RETURNING queue, key",
                    (now, job_id),
                ).fetchone()
                if row is not None:
                    self._status_events(conn, now, [job_id])
                    if row[1] is not None:
                        self._handoff(conn, {(row[0], row[1])})
                else:
                    conn.execute(
                        "UPDATE conveyor_jobs SET cancel_requested = 1 WHERE id = ? "
                        "AND status = 'running'",
                        (job_id,),
                    )
            found = conn.execute(
                f"SELECT {_COLUMNS} FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if found is None else _record(found)

        return await self._write(work)

    async def retry(self, job_id: str) -> JobRecord | None:
        def work(conn: sqlite3.Connection, now: float) -> JobRecord | None:
            row = conn.execute(
                "SELECT queue, key, unique_key, status FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return None
            queue, key, unique, status = row
            if status in ("failed", "dead", "cancelled"):
                if unique is not None and conn.execute(
                    f"SELECT 1 FROM conveyor_jobs WHERE queue = ? AND unique_key = ? "
                    f"AND status IN {_ACTIVE_SQL}", (queue, unique),
                ).fetchone():
                    unique = None  # an active job holds the value now; this one gives it up
                blocked = key is not None and conn.execute(
                    f"SELECT EXISTS (SELECT 1 FROM conveyor_jobs WHERE queue = ? AND key = ? "
                    f"AND status IN {_ACTIVE_SQL})", (queue, key),
                ).fetchone()[0]
                conn.execute(
                    "UPDATE conveyor_jobs SET status = 'queued', pos = ?, attempts = 0, lost = 0, "
                    "blocked = ?, unique_key = ?, run_at = ?, scheduled_for = NULL, "
                    "started_at = NULL, finished_at = NULL, cancel_requested = 0, worker = NULL "
                    "WHERE id = ?",
                    (self._next_pos(conn, 1), int(blocked), unique, now, job_id),
                )
                self._status_events(conn, now, [job_id], reason="retried")
            found = conn.execute(
                f"SELECT {_COLUMNS} FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return _record(found)

        return await self._write(work)

    async def recover(self, max_lost: int | None = None) -> list[str]:
        error = worker_lost(max_lost or 0)
        limit = max_lost if max_lost is not None else 1 << 62

        def work(conn: sqlite3.Connection, now: float) -> list[str]:
            # given up: jobs whose workers died under them too often (not those asked to cancel)
            dead = conn.execute(
                "UPDATE conveyor_jobs SET status = 'dead', finished_at = ?, lost = lost + 1, "
                "error = ?, lease_token = NULL, lease_expires_at = NULL, "
                "last_event = last_event + 1 WHERE status = 'running' AND lease_expires_at < ? "
                "AND cancel_requested = 0 AND lost + 1 >= ? "
                "RETURNING id, last_event, status, attempts, queue, key",
                (now, dump_json(error), now, limit),
            ).fetchall()
            self._append_status(
                conn, now, [r[:4] for r in dead], error=error, reason="lease expired"
            )
            self._handoff(conn, {(r[4], r[5]) for r in dead if r[5] is not None})
            # a job someone asked to cancel is not put back: its cancel completes here
            rows = conn.execute(
                f"UPDATE conveyor_jobs SET {_BACK_OR_CANCELLED}, lease_token = NULL, "
                "lease_expires_at = NULL, worker = NULL, run_at = ?, scheduled_for = NULL, "
                "lost = lost + 1 WHERE status = 'running' AND lease_expires_at < ? "
                "RETURNING id, status, queue, key",
                (now, now, now),
            ).fetchall()
            self._status_events(conn, now, [r[0] for r in rows], reason="lease expired")
            self._handoff(conn, {(r[2], r[3]) for r in rows if r[1] == "cancelled" and r[3]})
            return [r[0] for r in dead] + [r[0] for r in rows]

        return await self._write(work)

    async def progress(self, lease: Lease, fraction: float, message: str) -> bool:
        data = {"fraction": fraction, "message": message}
        text = dump_json(data)

        def work(conn: sqlite3.Connection, now: float) -> bool:
            row = conn.execute(
                "UPDATE conveyor_jobs SET progress = ? WHERE id = ? AND lease_token = ? "
                "AND status = 'running' RETURNING id",
                (text, lease.job_id, lease.token),
            ).fetchone()
            if row is None:
                return False
            self._events(conn, now, [(lease.job_id, "progress", data)])
            return True

        return await self._write(work)

    async def purge(self, before: datetime) -> int:
        cutoff = before.timestamp()

        def work(conn: sqlite3.Connection, now: float) -> int:
            ids = [r[0] for r in conn.execute(
                "DELETE FROM conveyor_jobs WHERE status IN ('succeeded', 'failed', 'dead', "
                "'cancelled') AND finished_at < ? RETURNING id", (cutoff,),
            )]
            conn.executemany("DELETE FROM conveyor_events WHERE job_id = ?", [(i,) for i in ids])
            return len(ids)

        return await self._write(work)

    # -- reads -----------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        def work(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM conveyor_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if row is None else _record(row)

        return await self._read(work)

    async def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        where, params = ["1 = 1"], []
        if flt.queue is not None:
            where.append("queue = ?")
            params.append(flt.queue)
        if flt.status is not None:
            where.append("status = ?")
            params.append(flt.status.value)
        if flt.task is not None:
            where.append("task = ?")
            params.append(flt.task)
        sql = (
            f"SELECT {_COLUMNS} FROM conveyor_jobs WHERE {' AND '.join(where)} "
            "ORDER BY pos DESC LIMIT ? OFFSET ?"
        )

        def work(conn: sqlite3.Connection) -> list[JobRecord]:
            return [_record(r) for r in conn.execute(sql, (*params, flt.limit, flt.offset))]

        return await self._read(work)

    async def stats(self, queue: str | None = None) -> dict[str, int]:
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            counts = {status.value: 0 for status in JobStatus}
            if queue is None:
                rows = conn.execute("SELECT status, COUNT(*) FROM conveyor_jobs GROUP BY status")
            else:
                rows = conn.execute(
                    "SELECT status, COUNT(*) FROM conveyor_jobs WHERE queue = ? GROUP BY status",
                    (queue,),
                )
            for status, count in rows:
                counts[status] = count
            return counts

        return await self._read(work)

    async def events(self, job_id: str, after: int = 0) -> list[Event]:
        def work(conn: sqlite3.Connection) -> list[Event]:
            return [
                Event(job_id, seq, type_, from_timestamp(at), json.loads(data))  # type: ignore[arg-type]
                for seq, type_, at, data in conn.execute(
                    "SELECT seq, type, at, data FROM conveyor_events WHERE job_id = ? AND seq > ? "
                    "ORDER BY seq", (job_id, after),
                )
            ]

        return await self._read(work)

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        ids = tuple(job_ids)
        marks = ",".join("?" * len(ids))

        def work(conn: sqlite3.Connection) -> set[str]:
            return {r[0] for r in conn.execute(
                f"SELECT id FROM conveyor_jobs WHERE id IN ({marks}) AND cancel_requested = 1", ids
            )}

        return await self._read(work)

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

    async def _next_due(self, queues: Sequence[str]) -> float | None:
        marks = ",".join("?" * len(queues))

        def work(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                f"SELECT MIN(run_at) FROM conveyor_jobs WHERE queue IN ({marks}) "
                "AND status = 'scheduled' AND blocked = 0",
                tuple(queues),
            ).fetchone()
            return None if row is None else row[0]

        return await self._read(work)

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        seen = self._claim_mark
        if self._changes.count != seen:
            return  # something changed while the last claim ran: look again
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        due = await self._next_due(queues)
        if due is not None:
            deadline = min(deadline, loop.time() + max(0.0, due - time.time()))
        await self._changes.wait(seen, max(0.0, deadline - loop.time()))

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
