"""``redis://``: jobs in Redis, shared by workers on many machines.

Every transition is one Lua script (``backends/lua/<verb>.lua``, with ``lib.lua`` prepended), so it
is atomic on the server, and each batch verb (enqueue, claim, complete, renew, release) is one
round trip whatever the batch size. Times that decide anything (lease expiry, when a scheduled
job is due) come from the Redis clock (``TIME`` inside the script), never from a worker's clock.
``lib.lua`` documents the key layout.

Workers are woken by push: enqueue publishes on ``<prefix>:wake:<queue>``, a cancel request of a
running job on ``<prefix>:cancel``, and every event on ``<prefix>:ev:<job id>``. One dedicated
pub/sub connection per backend (see :class:`_Listener`) receives them; it reconnects with backoff
when Redis goes away, and while it is down waiters fall back to a bounded poll, so a Redis restart
never needs a worker restart.

Hand-off: a worker whose claim came back short registers as idle for a moment, and the next
enqueue claims the job for it inside its own script and publishes the record on
``<prefix>:hand:<worker>``; ``claim()`` then returns it without a round trip. A message that got
lost comes back with the worker's next claim (see ``hand_out`` in ``lib.lua``).

URL: ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS), with conveyor's own
query options ``prefix`` (key namespace, default ``conveyor``) and ``retention`` (seconds a
finished job, its result and its events are kept, default 7 days); other query options go to
redis-py (``socket_timeout``, ``ssl_cert_reqs``, ...).

The module is longer than most because the pub/sub listener and the hand-off bookkeeping live
beside the backend they serve; the atomic logic itself is in the Lua files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.backends.base import Ack, Backend, JobFilter, Lease, RenewResult, worker_lost
from conveyor.errors import BackendError, ConfigError
from conveyor.model import ErrorInfo, Event, JobRecord, JobStatus, from_timestamp
from conveyor.serde import dump_json, load_stored

__all__ = ["RedisBackend"]

log = logging.getLogger("conveyor.redis")

_SCRIPTS = (
    "enqueue", "claim", "renew", "complete", "fail", "release", "cancel", "retry", "recover",
    "progress", "events", "stats", "list", "purge", "retire",
)
# the order of lib.lua's FIELDS: how every script returns a record
_FIELDS = (
    "id", "task", "queue", "status", "args", "kwargs", "priority", "key", "unique", "attempts",
    "max_attempts", "timeout", "enqueued_at", "scheduled_for", "started_at", "finished_at",
    "result", "error", "progress", "retry", "worker", "cancel_requested", "lease_token",
    "lease_expires_at",
)
_OPTIONS = {"prefix", "retention"}
_DEFAULT_RETENTION = 7 * 24 * 3600.0
_RECOVER_BATCH = 1000
_LIST_BUDGET = 50_000
_IDLE_CONNECTIONS = 8  # script connections kept open between commands
_HAND_TOKENS_KEPT = 10_000

Handler = Callable[[str], None]



def _ts(d: datetime | None) -> str:
    # repr keeps every digit of the float: a stored time reads back exactly
    return "" if d is None else repr(d.timestamp())


def _dt(text: str | None) -> datetime | None:
    return None if text is None else from_timestamp(float(text))



def _record(v: Sequence[str | None]) -> JobRecord:
    """A record from the values of lib.lua's FIELDS (absent fields are None)."""
    return JobRecord(
        id=v[0], task=v[1], queue=v[2], status=JobStatus(v[3]),  # type: ignore[arg-type]
        args=load_stored(v[4]), kwargs=load_stored(v[5]), priority=int(v[6] or 0), key=v[7],
        unique=v[8],
        attempts=int(v[9] or 0), max_attempts=int(v[10] or 1),
        timeout=None if v[11] is None else float(v[11]),
        enqueued_at=_dt(v[12]),  # type: ignore[arg-type]
        scheduled_for=_dt(v[13]), started_at=_dt(v[14]), finished_at=_dt(v[15]),
        result=load_stored(v[16]), error=load_stored(v[17]), progress=load_stored(v[18]),
        retry=load_stored(v[19]),
        worker=v[20], cancel_requested=v[21] == "1", lease_token=v[22],
        lease_expires_at=_dt(v[23]),
    )


@functools.cache
def _load_scripts() -> dict[str, str]:
    folder = resources.files("conveyor.backends").joinpath("lua")
    lib = folder.joinpath("lib.lua").read_text(encoding="utf-8")
    return {
        name: lib + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in _SCRIPTS
    }


class RedisBackend(Backend):
    """Jobs in Redis: many worker processes and machines share one server.

    See the module docstring for the URL options and ``lua/lib.lua`` for the key layout.
    """

    #: while the pub/sub connection is down, how often idle workers look for work, in seconds
    fallback_poll = 0.5

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(f"expected redis://host:port/db, got {self.safe_url!r}")
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in _OPTIONS:
                ours[name] = value
            else:
                theirs.append((name, value))
        self.prefix = ours.get("prefix", "conveyor")
        if not self.prefix:
            raise ConfigError("the redis prefix must not be empty")
        try:
            self.retention = float(ours.get("retention", _DEFAULT_RETENTION))
        except ValueError:
            raise ConfigError("retention must be a number of seconds") from None
        if not self.retention >= 1:
            raise ConfigError("retention must be at least 1 second")
        self._driver_url = urlunsplit(parts._replace(query=urlencode(theirs)))
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, tuple[str, str]] = {}  # name -> (sha1, text)
        self._idle_conns: list[AbstractConnection] = []
        self._listener: _Listener | None = None
        self._wake = _Latch()
        self._wake_channels: set[str] = set()
        self._cancel_watchers: set[Handler] = set()
        # per queue set: (monotonic time measured, seconds until the next scheduled job is due)
        self._next_due: dict[tuple[str, ...], tuple[float, float]] = {}
        # jobs Redis handed to an idle worker of this process (claimed for it), per worker id,
        # until its next claim() takes them; see hand_out in lib.lua
        self._handed: dict[str, list[JobRecord]] = {}
        self._hand_queues: dict[str, tuple[str, ...]] = {}
        self._retired: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        # tokens of handed jobs already taken in, oldest first (a bounded ordered set)
        self._hand_tokens: dict[str, None] = {}
        self._just_handed = False

    @property
    def safe_url(self) -> str:
        """The URL with the password masked, in the user part and in a ``password=`` option."""
        masked = super().safe_url
        parts = urlsplit(masked)
        if "password" not in parts.query:
            return masked
        query = [
            (k, "***" if k == "password" else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        return urlunsplit(parts._replace(query=urlencode(query, safe="*")))

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the connection pool and load the scripts (nothing is written)."""
        if self._client is not None:
            return
        # no socket_timeout by default: it costs a timer per command on the hot path, and TCP
        # keepalive finds dead peers (set ?socket_timeout= in the URL to bound each command)
        client = aioredis.Redis.from_url(
            self._driver_url, decode_responses=True, socket_connect_timeout=5.0,
            socket_keepalive=True,
            # a dropped connection (Redis restarting) is retried briefly before it is an error
            retry=RedisRetry(ExponentialBackoff(cap=0.5, base=0.02), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError],
        )
        scripts = {
            name: (hashlib.sha1(text.encode()).hexdigest(), text)
            for name, text in _load_scripts().items()
        }
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            raise BackendError(f"redis at {self.safe_url}: {exc}") from exc
        self._client, self._scripts = client, scripts

    async def close(self) -> None:
        """Give back handed jobs, stop listening and release every connection. Idempotent."""
        for worker in list(self._hand_queues):
            with contextlib.suppress(BackendError):
                await self.retire(worker)
        self._hand_queues.clear()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        client, self._client = self._client, None
        conns, self._idle_conns = self._idle_conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        if client is not None:
            await client.aclose()
        self._wake_channels.clear()

    # -- plumbing --------------------------------------------------------------------------
    async def _run(self, name: str, *args: Any) -> Any:
        """Run one script; driver errors become BackendError with the original as cause."""
        if self._client is None:
            raise BackendError("the Redis backend is not open (use `async with queue:`)")
        sha, text = self._scripts[name]
        full = (self.prefix, self.retention, *args)
        delay = 0.02
        for attempt in range(4):
            try:
                try:
                    return await self._command("EVALSHA", sha, 0, *full)
                except NoScriptError:  # a restarted or flushed server: load it once more
                    return await self._command("EVAL", text, 0, *full)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # a dropped connection (Redis restarting) is tried again briefly first. If the
                # script ran but its reply was lost, running it again is safe: enqueue skips
                # ids it has, fenced verbs answer False, and a second claim's leases expire
                # and come back (at-least-once, never lost)
                if attempt == 3:
                    raise BackendError(f"redis {name}: {exc}") from exc
                # the other idle connections most likely died with this one: start afresh
                conns, self._idle_conns = self._idle_conns, []
                for conn in conns:
                    with contextlib.suppress(Exception):
                        await conn.disconnect()
                await asyncio.sleep(delay)
                delay *= 4
            except RedisError as exc:
                raise BackendError(f"redis {name}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _command(self, *args: Any) -> Any:
        """Send one command on a connection of our own and read its reply.

        The scripts go this way rather than through redis-py's client: it skips the pool's
        per-command bookkeeping, which is a fair part of a round trip's cost on the hot path.
        A connection whose exchange did not end cleanly (an error, a cancel mid-read) is closed,
        never reused.
        """
        if self._idle_conns:
            conn = self._idle_conns.pop()
        else:
            assert self._client is not None
            pool = self._client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            await conn.connect()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command(*args, check_health=False)
            reply = await conn.read_response()
        except ResponseError:
            self._idle_conns.append(conn)  # the server answered: the connection is fine
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise
        if len(self._idle_conns) < _IDLE_CONNECTIONS:
            self._idle_conns.append(conn)
        else:  # a burst is over: keep only a few connections open
            await conn.disconnect()
        return reply

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _listen(self) -> _Listener:
        if self._listener is None:
            assert self._client is not None
            pool = self._client.connection_pool
            self._listener = _Listener(
                lambda: pool.connection_class(**pool.connection_kwargs),
                on_reconnect=self._wake.set,
            )
            # one channel for every cancel request of the namespace; few, so broadcast
            self._listener.subscribe(f"{self.prefix}:cancel", self._on_cancel)
        return self._listener

    def _on_cancel(self, job_id: str) -> None:
        for watcher in list(self._cancel_watchers):
            watcher(job_id)

    def _on_wake(self, _: str) -> None:
        self._wake.set()

    # -- transitions -----------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        if not jobs:
            return []
        # one JSON argument for the batch: far cheaper to send than 14 arguments per job; args,
        # kwargs and retry ride along as JSON text inside it, so Lua stores them byte for byte
        batch = dump_json([
            [job.id, job.task, job.queue, dump_json(job.args), dump_json(job.kwargs), str(job.priority),
             job.key, job.unique, str(job.max_attempts),
             "" if job.timeout is None else repr(float(job.timeout)), _ts(job.enqueued_at),
             _ts(job.scheduled_for), "" if job.retry is None else dump_json(job.retry),
             job.supersede]
            for job in jobs
        ])
        replies = await self._run("enqueue", batch)
        # a worker in this process need not wait for the published wake-up to come back
        self._wake.set()
        out: list[JobRecord] = []
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, list):
                out.append(_record(reply))
                continue
            out.append(replace(job, status=JobStatus(reply), supersede=False))
        return out

    async def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[JobRecord]:
        if limit <= 0 or not queues:
            return []
        handed = self._handed.get(worker)
        if handed:  # claimed for us already, by an enqueue (no round trip)
            self._handed[worker] = handed[limit:]
            self._just_handed = True
            return handed[:limit]
        if self._just_handed:
            # the caller is about to start the jobs it was just handed: let them begin before
            # this claim spends its time on a round trip
            self._just_handed = False
            await asyncio.sleep(0)
        self._retired.discard(worker)
        handoff = await self._listen_for_hand_outs(worker, queues)
        # tokens: a random prefix per call and the job's place in the batch; unique, unguessable
        prefix = secrets.token_hex(8) + "."
        reply = await self._run(
            "claim", worker, limit, repr(float(lease)), prefix, "1" if handoff else "0", *queues
        )
        if reply[0] != "":
            self._next_due[tuple(queues)] = (time.monotonic(), float(reply[0]))
        else:
            self._next_due.pop(tuple(queues), None)
        out: list[JobRecord] = []
        # reply[1]: handed to us since the last claim (keep any we never got); then the claimed
        for handed_out, values in [(True, v) for v in reply[1]] + [(False, v) for v in reply[2:]]:
            try:
                record = _record(values)
            except (ValueError, TypeError, IndexError) as exc:
                # its lease is ours: failing it here keeps it from waiting out the lease
                with contextlib.suppress(BackendError):
                    await self._quarantine(str(values[0]), str(values[22]), exc)
                continue
            if not handed_out or self._first_copy(record):
                out.append(record)
        if len(out) > limit:  # recovered hand-outs beyond the free slots wait for the next claim
            self._handed.setdefault(worker, []).extend(out[limit:])
            out = out[:limit]
        return out

    def _first_copy(self, record: JobRecord) -> bool:
        """True the first time a handed job arrives (by pub/sub or with a claim), else False."""
        token = record.lease_token or ""
        if token in self._hand_tokens:
            return False
        self._hand_tokens[token] = None
        if len(self._hand_tokens) > _HAND_TOKENS_KEPT:
            del self._hand_tokens[next(iter(self._hand_tokens))]
        return True

    async def _quarantine(self, job_id: str, token: str, exc: Exception) -> None:
        """Fail a claimed job that cannot be decoded (a foreign writer), so it never spins."""
        error: ErrorInfo = {
            "type": "MalformedJob",
            "message": f"the stored job cannot be decoded: {type(exc).__name__}: {exc}",
            "traceback": "",
        }
        await self.fail(Lease(job_id, token), error, retry_at=None)

    async def _listen_for_hand_outs(self, worker: str, queues: Sequence[str]) -> bool:
        """Subscribe to the worker's hand-out channel; True once Redis may hand it jobs."""
        listener = self._listen()
        channel = f"{self.prefix}:hand:{worker}"
        if worker not in self._hand_queues:
            self._hand_queues[worker] = tuple(queues)
            listener.subscribe(channel, lambda data: self._on_hand(worker, data))
            await listener.ready([channel])
        return listener.healthy and listener.active(channel)

    def _on_hand(self, worker: str, data: str) -> None:
        try:
            values = [None if v is False else v for v in json.loads(data)]
            record = _record(values)
        except (ValueError, TypeError, IndexError) as exc:
            log.warning("redis: a job handed to %s cannot be decoded (%s)", worker, exc)
            return
        assert record.lease_token is not None
        if not self._first_copy(record):
            return  # a claim brought it already
        if worker in self._retired:  # it stopped claiming while the job was on its way
            lease = Lease(record.id, record.lease_token)
            task = asyncio.get_running_loop().create_task(self._release_quietly([lease]))
            self._background.add(task)  # a strong reference until it is done
            task.add_done_callback(self._background.discard)
            return
        self._handed.setdefault(worker, []).append(record)
        self._wake.set()

    async def _release_quietly(self, leases: Sequence[Lease]) -> None:
        try:
            await self.release(leases)
        except BackendError:  # the lease runs out and recover() puts the job back
            log.warning("redis: could not give back %d handed job(s)", len(leases), exc_info=True)

    async def retire(self, worker: str) -> None:
        """The worker claims nothing more: stop handing it jobs, give back what it was handed."""
        self._retired.add(worker)
        queues = self._hand_queues.get(worker, ())
        if queues:
            await self._run("retire", worker, *queues)
        handed = self._handed.pop(worker, [])
        if handed:
            await self.release([Lease(r.id, r.lease_token or "") for r in handed])

    async def renew(self, leases: Sequence[Lease], lease: float) -> RenewResult:
        # handed jobs no claim() has taken yet are renewed too: the worker does not know them
        waiting = [Lease(r.id, r.lease_token or "") for rs in self._handed.values() for r in rs]
        every = [*leases, *waiting]
        if not every:
            return RenewResult(frozenset(), frozenset())
        args: list[str] = []
        for held in every:
            args += (held.job_id, held.token)
        reply = await self._run("renew", repr(float(lease)), *args)
        gone = {h.job_id for h, r in zip(every, reply, strict=True) if r == 0}
        if gone & {w.job_id for w in waiting}:
            for worker, records in self._handed.items():
                self._handed[worker] = [r for r in records if r.id not in gone]
        mine = {h.job_id for h in leases}
        cancel = frozenset(
            h.job_id for h, r in zip(every, reply, strict=True) if r == 2 and h.job_id in mine
        )
        return RenewResult(frozenset(gone & mine), cancel)

    async def complete(self, acks: Sequence[Ack]) -> list[bool]:
        if not acks:
            return []
        # one JSON argument; each result rides inside as JSON text, stored byte for byte
        batch = dump_json([[ack.job_id, ack.token, dump_json(ack.result)] for ack in acks])
        return [r == 1 for r in await self._run("complete", batch)]

    async def fail(
        self, lease: Lease, error: ErrorInfo, *, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        final = JobStatus.DEAD if dead else JobStatus.FAILED
        reply = await self._run(
            "fail", lease.job_id, lease.token, dump_json(error), _ts(retry_at), final.value
        )
        return bool(reply == 1)

    async def release(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []
        args: list[str] = []
        for held in leases:
            args += (held.job_id, held.token)
        return [r == 1 for r in await self._run("release", *args)]

    async def cancel(
        self, job_id: str, *, lease: Lease | None = None, error: ErrorInfo | None = None
    ) -> JobRecord | None:
        reply = await self._run(
            "cancel", job_id, "" if lease is None else lease.token,
            "" if error is None else dump_json(error),
        )
        return None if reply is None else _record(reply)

    async def retry(self, job_id: str) -> JobRecord | None:
        reply = await self._run("retry", job_id)
        self._wake.set()
        return None if reply is None else _record(reply)

    async def recover(self, max_lost: int | None = None) -> list[str]:
        error = dump_json(worker_lost(max_lost or 0))
        return list(await self._run("recover", _RECOVER_BATCH, max_lost or 0, error))

    async def purge(self, before: datetime) -> int:
        """Delete finished jobs that finished before ``before`` (besides the ``retention`` TTL)."""
        total = 0
        while True:
            done = int(await self._run("purge", _ts(before), _RECOVER_BATCH))
            total += done
            if done < _RECOVER_BATCH:
                return total

    async def progress(self, lease: Lease, fraction: float, message: str) -> bool:
        data = dump_json({"fraction": fraction, "message": message})
        return bool(await self._run("progress", lease.job_id, lease.token, data) == 1)

    # -- reads -----------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        if self._client is None:
            raise BackendError("the Redis backend is not open (use `async with queue:`)")
        try:
            values: list[str | None] = await self._client.hmget(  # type: ignore[assignment]
                self._job_key(job_id), _FIELDS
            )
        except RedisError as exc:
            raise BackendError(f"redis get: {exc}") from exc
        return None if values[0] is None else _record(values)

    async def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        reply = await self._run(
            "list", flt.queue or "", "" if flt.status is None else flt.status.value,
            flt.task or "", flt.limit, flt.offset, _LIST_BUDGET + flt.offset + flt.limit,
        )
        return [_record(values) for values in reply]

    async def stats(self, queue: str | None = None) -> dict[str, int]:
        counts = {status.value: 0 for status in JobStatus}
        reply = await self._run("stats", queue or "")
        for i in range(0, len(reply), 2):
            counts[reply[i]] = int(reply[i + 1])
        return counts

    async def events(self, job_id: str, after: int = 0) -> list[Event]:
        out: list[Event] = []
        for seq, text in enumerate(await self._run("events", job_id, after), start=after + 1):
            if text is None:  # the job expired between two reads
                break
            at, kind, data = json.loads(text)
            out.append(Event(job_id, seq, kind, datetime.fromtimestamp(at, UTC), data))
        return out

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        if self._client is None:
            raise BackendError("the Redis backend is not open (use `async with queue:`)")
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self._job_key(job_id), "cancel_requested")
                flags = await pipe.execute()
        except RedisError as exc:
            raise BackendError(f"redis cancel_requested: {exc}") from exc
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag == "1"}

    # -- waiting ---------------------------------------------------------------------------
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for a wake-up published on the queues' channels, or for the next due job."""
        if any(self._handed.values()):
            return
        listener = self._listen()
        fresh = [f"{self.prefix}:wake:{q}" for q in queues]
        fresh = [ch for ch in fresh if ch not in self._wake_channels]
        if fresh:
            self._wake_channels.update(fresh)
            for channel in fresh:
                listener.subscribe(channel, self._on_wake)
            await listener.ready(fresh)
            return  # jobs enqueued before the subscription went unheard: look again now
        due = self._next_due.get(tuple(queues))
        if due is not None:
            timeout = min(timeout, max(0.0, due[1] - (time.monotonic() - due[0])))
        if not listener.healthy:
            timeout = min(timeout, self.fallback_poll)
        await self._wake.wait_and_clear(timeout)

    async def wait_for_events(self, job_id: str, after: int, timeout: float) -> list[Event]:
        """Events with ``seq > after``; waits up to ``timeout`` seconds for a push of the first."""
        found = await self.events(job_id, after)
        if found or timeout <= 0:
            return found
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        listener = self._listen()
        channel = f"{self.prefix}:ev:{job_id}"
        arrived = asyncio.Event()

        def on_event(_: str) -> None:
            arrived.set()

        listener.subscribe(channel, on_event)
        try:
            await listener.ready([channel])
            # an event may have landed between the first look and the subscription
            found = await self.events(job_id, after)
            if found:
                return found
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    return []
                # push only counts once the server confirmed the subscription; until then, poll
                pushed = listener.healthy and listener.active(channel)
                wait = left if pushed else min(left, self.fallback_poll)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), wait)
                arrived.clear()
                found = await self.events(job_id, after)
                if found:
                    return found
        finally:
            listener.unsubscribe(channel, on_event)

    async def watch_cancellations(self, callback: Handler) -> Callable[[], None] | None:
        """Call ``callback(job_id)`` when a cancel of a running job is requested (pushed)."""
        listener = self._listen()
        self._cancel_watchers.add(callback)
        await listener.ready([f"{self.prefix}:cancel"])
        return lambda: self._cancel_watchers.discard(callback)

class _Latch:
    """A flag that stays set until a waiter takes it; waking costs one loop step.

    ``asyncio.wait_for(event.wait(), t)`` would wrap the wait in a task of its own; on the
    pickup path every loop step counts.
    """

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        """Raise the flag and wake every waiter."""
        self._flag = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_and_clear(self, timeout: float) -> None:
        """Return once the flag is up (lowering it), or after ``timeout`` seconds."""
        if not self._flag:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.add(fut)
            timer = loop.call_later(timeout, _settle, fut)
            try:
                await fut
            finally:
                timer.cancel()
                self._waiters.discard(fut)
        self._flag = False


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Listener:
    """One dedicated pub/sub connection: hands each message to the handlers of its channel.

    Subscriptions are declared with :meth:`subscribe` at any time and survive reconnects. The
    connection is checked with a PING when it has been silent for ``idle`` seconds; when it
    drops, the listener reconnects with backoff and calls ``on_reconnect`` (messages may have
    been missed), and :attr:`healthy` is False meanwhile so waiters poll instead.
    """

    idle = 15.0

    def __init__(
        self, connect: Callable[[], AbstractConnection], on_reconnect: Callable[[], None]
    ) -> None:
        self._connect = connect
        self._on_reconnect = on_reconnect
        self._handlers: dict[str, set[Handler]] = {}
        self._sent: set[str] = set()  # subscribed on the current connection (asked)
        self._active: set[str] = set()  # confirmed by the server on the current connection
        self._confirmed = asyncio.Event()
        self._conn: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        # the loop keeps only weak references to tasks: an unreferenced SUBSCRIBE could vanish
        self._sending: set[asyncio.Task[None]] = set()
        self.healthy = False

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Deliver the messages of ``channel`` to ``handler`` (see :meth:`ready`)."""
        self._handlers.setdefault(channel, set()).add(handler)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="conveyor-redis")
        self._sync()

    def unsubscribe(self, channel: str, handler: Handler) -> None:
        """Stop delivering ``channel`` to ``handler``; the last one leaves the channel."""
        handlers = self._handlers.get(channel)
        if handlers is None:
            return
        handlers.discard(handler)
        if handlers:
            return
        del self._handlers[channel]
        if channel in self._sent and self._conn is not None:
            self._sent.discard(channel)
            self._active.discard(channel)
            self._send("UNSUBSCRIBE", channel)

    async def ready(self, channels: Sequence[str], timeout: float = 1.0) -> None:
        """Wait until the server confirmed these subscriptions (at most ``timeout`` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(ch in self._active for ch in channels):
            left = deadline - loop.time()
            if left <= 0:
                return  # Redis is away; callers poll until the listener is back
            self._confirmed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._confirmed.wait(), left)

    def active(self, channel: str) -> bool:
        """True while the server confirms a subscription to ``channel`` on this connection."""
        return channel in self._active

    async def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._handlers.clear()

    # -- internals -------------------------------------------------------------------------
    def _send(self, *args: str) -> None:
        conn = self._conn
        if conn is None:
            return

        async def send() -> None:
            with contextlib.suppress(RedisError, OSError):
                # check_health=False: a health check would read, and only _run may read
                await conn.send_command(*args, check_health=False)

        task = asyncio.get_running_loop().create_task(send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _sync(self) -> None:
        missing = [ch for ch in self._handlers if ch not in self._sent]
        if missing and self._conn is not None:
            self._sent.update(missing)
            self._send("SUBSCRIBE", *missing)

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3:
            return  # a PONG
        kind, channel, data = message[0], message[1], message[2]
        if kind == "message":
            for handler in list(self._handlers.get(channel, ())):
                try:
                    handler(data)
                except Exception:  # a handler's bug must not end the listener
                    log.exception("redis listener: handler for %s failed", channel)
        elif kind == "subscribe":
            self._active.add(channel)
            self._confirmed.set()

    async def _run(self) -> None:
        delay = 0.05
        connected_before = False
        while True:
            conn = self._connect()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                self._conn, self._sent, self._active = conn, set(), set()
                self._sync()
                self.healthy = True
                if connected_before:
                    log.info("redis listener reconnected")
                    self._on_reconnect()
                connected_before = True
                delay = 0.05
                pinged = False
                while True:
                    message = await conn.read_response(timeout=self.idle, push_request=True)
                    if message is None:
                        if pinged:
                            raise RedisTimeoutError(f"no answer to PING within {self.idle} s")
                        pinged = True
                        await conn.send_command("PING", check_health=False)
                        continue
                    pinged = False
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.healthy or delay == 0.05:
                    log.warning("redis listener lost its connection (%s); reconnecting", exc)
            finally:
                self.healthy = False
                self._conn = None
                self._active.clear()
                self._confirmed.set()  # waiters re-check (and fall back to polling)
                with contextlib.suppress(Exception):
                    await conn.disconnect()
            self._on_reconnect()  # idle workers should look for work while pushes are off
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
