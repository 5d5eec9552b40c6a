"""The Redis backend's verbs: each one a Lua script (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.exceptions import RedisError

from conveyor.backends.base import (
    Ack,
    Backend,
    JobFilter,
    Lease,
    RenewResult,
    malformed_job,
    worker_lost,
)
from conveyor.backends.latch import Latch
from conveyor.backends.redis.clock import RedisClock, elapsed, shifted
from conveyor.backends.redis.connection import Scripts, honour_cancel
from conveyor.backends.redis.handoff import Confirmations, HandOffs
from conveyor.backends.redis.listener import Handler, Listener
from conveyor.backends.redis.records import FIELDS, dt, record, ts
from conveyor.errors import BackendError, ConfigError, PayloadTooLarge
from conveyor.model import ErrorInfo, Event, JobRecord, JobStatus
from conveyor.serde import dump_json

__all__ = ["RedisBackend"]

log = logging.getLogger("conveyor.redis")

_OPTIONS = {"prefix", "retention"}
_DEFAULT_RETENTION = 7 * 24 * 3600.0
_RECOVER_BATCH = 1000
# index entries one list call may look at in all: a task filter reads a record per entry, and
# the script holds the server meanwhile (about 5 µs each)
_LIST_BUDGET = 20_000
# a hand-out older than this (Redis clock) when the worker takes it is checked before it starts:
# half the second Redis waits for its confirmation (HAND_CONFIRM in lua/lib.lua)
_HAND_FRESH = 0.5
# seconds after which an idle worker claims again to renew its registration (it lives two seconds
# from the claim, IDLE_TTL in claim.lua); until then hand-outs need no claim round trip
_IDLE_REFRESH = 1.0
# scripts that make nothing claimable for this process's workers (complete says when it does)
_KEEP_CLEAN = frozenset({"claim", "complete", "renew", "progress", "events", "list", "stats",
                         "purge", "retire"})
# One enqueue is one script, and Redis serves nobody else while a script runs (about 30 µs per
# job): 50,000 jobs hold it for one to two seconds. Bigger batches are refused before anything
# is written (splitting them would break all-or-nothing); see docs/redis.md.
MAX_ENQUEUE_JOBS = 50_000
# half of Redis' default proto-max-bulk-len (512 MB): the batch travels as one argument
MAX_ENQUEUE_BYTES = 256 << 20


class RedisBackend(Backend):
    """Jobs in Redis: many worker processes and machines share one server.

    See the package docstring for the URL options and ``lua/lib.lua`` for the key layout.
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
        driver_url = urlunsplit(parts._replace(query=urlencode(theirs)))
        self._scripts = Scripts(driver_url, self.safe_url, self.prefix, self.retention)
        self._listener: Listener | None = None
        self._wake = Latch()
        self._wake_channels: set[str] = set()
        self._cancel_watchers: set[Handler] = set()
        # per queue set: (monotonic time measured, seconds until the next scheduled job is due)
        self._next_due: dict[tuple[str, ...], tuple[float, float]] = {}
        self._clock = RedisClock(self._scripts.command)
        self._confirms = Confirmations(self._send_confirmations)
        self._hands = HandOffs(self._wake.set, self._give_back, self._confirms.add, self._push)
        self._takers: dict[str, Callable[[JobRecord], bool]] = {}  # see deliver_to
        self._background: set[asyncio.Task[None]] = set()
        # worker id -> when (elapsed()) the claim that registered it idle was sent: while that
        # registration holds (_IDLE_REFRESH), taking a hand-out needs no claim round trip after it
        self._idle_at: dict[str, float] = {}
        # something this process did (or a wake-up it heard) may have made work claimable: the
        # next claim goes to Redis even when a hand-out would let it skip the round trip
        self._dirty = False

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
        if self._scripts.client is not None:
            return
        await self._scripts.open()
        await self._check_eviction()
        await self._upgrade()
        await self._clock.skew()  # measured now, while nothing of ours keeps the server busy

    async def _upgrade(self) -> None:
        """Move a store written before the listing indexes onto them, in short batches."""
        client = self._scripts.opened()
        try:
            queues = [str(q) for q in await client.smembers(f"{self.prefix}:queues")]
            if not queues or not await client.exists(*(f"{self.prefix}:q:{q}:all" for q in queues)):
                return
        except RedisError as exc:
            raise BackendError(f"redis upgrade: {exc}") from exc
        log.info("redis at %s: moving its jobs onto the listing indexes (once)", self.safe_url)
        while int(await self._run("upgrade", _RECOVER_BATCH)) > 0:
            pass

    async def _check_eviction(self) -> None:
        """Warn when Redis may evict keys: a job record evicted is a job lost."""
        try:
            info = await self._scripts.opened().info("memory")
        except RedisError:  # INFO may be refused (ACLs, managed services): nothing to tell
            return
        policy = info.get("maxmemory_policy", "noeviction")
        if policy != "noeviction":
            log.warning(
                "redis at %s has maxmemory-policy %s: under memory pressure it may evict job "
                "records, and those jobs are lost; set maxmemory-policy noeviction",
                self.safe_url, policy,
            )

    async def close(self) -> None:
        """Give back handed jobs, stop listening and release every connection. Idempotent."""
        for worker in list(self._hands.queues):
            with contextlib.suppress(BackendError):
                await self.retire(worker)
        self._hands.queues.clear()
        await self._confirms.close()  # what it would confirm was given back by retire() above
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        await self._scripts.close()
        self._wake_channels.clear()

    # -- plumbing --------------------------------------------------------------------------
    async def _run(self, name: str, *args: Any) -> Any:
        if name not in _KEEP_CLEAN:
            self._dirty = True
        return await self._scripts.run(name, *args)

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _listen(self) -> Listener:
        if self._listener is None:
            self._listener = Listener(self._scripts.connect, on_reconnect=self._on_wake_all)
            # one channel for every cancel request of the namespace; few, so broadcast
            self._listener.subscribe(f"{self.prefix}:cancel", self._on_cancel)
        return self._listener

    def _on_cancel(self, job_id: str) -> None:
        for watcher in list(self._cancel_watchers):
            watcher(job_id)

    def _on_wake_all(self) -> None:
        self._on_wake("")  # pushes may have been missed: look

    def _on_wake(self, _: str) -> None:
        self._dirty = True
        self._wake.set()

    # -- transitions -----------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        if not jobs:
            return []
        if len(jobs) > MAX_ENQUEUE_JOBS:
            raise PayloadTooLarge(
                f"{len(jobs)} jobs in one enqueue: Redis takes at most {MAX_ENQUEUE_JOBS} per call "
                "(one atomic script blocks the server while it runs); split the batch"
            )
        # due times move onto the Redis clock here (the offset is measured on a quiet round trip)
        skew = await self._clock.skew() if any(job.scheduled_for for job in jobs) else 0.0
        # one JSON argument for the batch: far cheaper to send than 14 arguments per job; args,
        # kwargs and retry ride along as JSON text inside it, so Lua stores them byte for byte
        batch = dump_json([
            [job.id, job.task, job.queue, dump_json(job.args), dump_json(job.kwargs), str(job.priority),
             job.key, job.unique, str(job.max_attempts),
             "" if job.timeout is None else repr(float(job.timeout)), ts(job.enqueued_at),
             shifted(job.scheduled_for, skew), "" if job.retry is None else dump_json(job.retry),
             job.supersede, dump_json(job.meta) if job.meta else ""]
            for job in jobs
        ])
        if len(batch) > MAX_ENQUEUE_BYTES:  # ASCII JSON (ensure_ascii): characters are bytes
            raise PayloadTooLarge(
                f"the batch is {len(batch)} characters as JSON, over the {MAX_ENQUEUE_BYTES}-byte "
                "limit of one Redis enqueue; split the batch"
            )
        replies = await self._run("enqueue", batch, "")
        # a worker in this process need not wait for the published wake-up to come back
        self._wake.set()
        out: list[JobRecord] = []
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, list):
                out.append(record(reply))
                continue
            if reply == "queued" and job.status is JobStatus.QUEUED and not job.supersede:
                out.append(job)  # stored as sent (the common case: no copy)
                continue
            # "<status>" or "<status> <due time by the Redis clock>"
            status, _, due = reply.partition(" ")
            out.append(replace(
                job, status=JobStatus(status), supersede=False,
                scheduled_for=dt(due) if due else job.scheduled_for,
            ))
        return out

    async def claim(
        self, queues: Sequence[str], worker: str, limit: int, lease: float
    ) -> list[JobRecord]:
        if limit <= 0 or not queues:
            return []
        handed = self._hands.take(worker, limit)
        if handed:  # claimed for us already, by an enqueue (no round trip)
            handed = await self._still_ours(handed)
            if handed:
                return handed
        if self._hands.just_handed:
            self._hands.just_handed = False
            registered = self._idle_at.get(worker)
            if (not self._dirty and registered is not None
                    and elapsed() - registered < _IDLE_REFRESH):
                # still registered idle: Redis hands it the next job too, or publishes a wake-up
                # when it could not (wait_for_jobs wakes for either): no round trip per job
                return []
            # the caller is about to start the jobs it was just handed: let them begin before
            # this claim spends its time on a round trip
            await asyncio.sleep(0)
        self._hands.retired.discard(worker)
        handoff = await self._listen_for_hand_outs(worker, queues)
        # tokens: a random prefix per call and the job's place in the batch; unique, unguessable
        prefix = secrets.token_hex(8) + "."
        received = self._hands.registering(worker, prefix)
        sent = elapsed()
        self._dirty = False  # writes that land from now on set it again
        reply = await self._run(
            "claim", worker, limit, repr(float(lease)), prefix, "1" if handoff else "0",
            received, *queues,
        )
        due, server_now, registered = reply[0]
        self._clock.anchor(float(server_now), sent)  # for hand-outs' age
        if due != "":
            self._next_due[tuple(queues)] = (time.monotonic(), float(due))
        else:
            self._next_due.pop(tuple(queues), None)
        out: list[JobRecord] = []
        # reply[1]: handed to us since the last claim (keep any we never got); then the claimed
        for handed_out, values in [(True, v) for v in reply[1]] + [(False, v) for v in reply[2:]]:
            try:
                job = record(values)
            except (ValueError, TypeError, IndexError) as exc:
                # its lease is ours: failing it here keeps it from waiting out the lease
                with contextlib.suppress(BackendError):
                    await self._quarantine(str(values[0]), str(values[22]), exc)
                continue
            if not handed_out or self._hands.first_copy(job):
                out.append(job)
        if len(out) > limit:  # recovered hand-outs beyond the free slots wait for the next claim
            self._hands.keep(worker, out[limit:])
            out = out[:limit]
        if registered == "1":
            self._idle_at[worker] = sent  # the script registered it idle (IDLE_TTL in claim.lua)
        else:
            self._idle_at.pop(worker, None)
        if len(out) < limit:
            # handed to us by pub/sub while the script ran (its copy in the reply was dropped
            # as the second one): take them now rather than at the next claim
            out += await self._still_ours(self._hands.take(worker, limit - len(out)))
        return out

    def deliver_to(self, worker: str, take: Callable[[JobRecord], bool] | None) -> None:
        if take is None:
            self._takers.pop(worker, None)
        else:
            self._takers[worker] = take

    def _push(self, worker: str, job: JobRecord) -> bool:
        """Start a fresh hand-out in its worker at once; late ones wait for a checked claim."""
        take = self._takers.get(worker)
        if take is None or job.started_at is None:
            return False
        if self._clock.now() - job.started_at.timestamp() > _HAND_FRESH:
            return False
        return take(job)

    async def _still_ours(self, handed: list[JobRecord]) -> list[JobRecord]:
        """The handed jobs this worker may start: fresh ones at once, late ones once checked.

        A hand-out Redis does not hear confirmed within a second goes back to the queue and may
        run elsewhere. A record that reaches the worker late (its process was stopped, its loop
        blocked) is confirmed and checked first, a round trip taken only on this rare path, so
        a job taken back is never started here as well.
        """
        now = self._clock.now()
        out: list[JobRecord] = []
        for job in handed:
            started = job.started_at.timestamp() if job.started_at is not None else now
            if now - started <= _HAND_FRESH:
                out.append(job)
                continue
            member = f"{job.id}\n{job.lease_token}"
            await self._scripts.command("ZREM", f"{self.prefix}:handing", member)
            state = await self._scripts.command(
                "HMGET", self._job_key(job.id), "status", "lease_token"
            )
            if state == ["running", job.lease_token]:
                out.append(job)
            else:
                log.info("redis: job %s was handed here too late and went elsewhere", job.id)
        return out

    async def _quarantine(self, job_id: str, token: str, exc: Exception) -> None:
        """Fail a claimed job that cannot be decoded (a foreign writer), so it never spins."""
        error = malformed_job(exc)
        await self.fail(Lease(job_id, token), error, retry_at=None)

    async def _listen_for_hand_outs(self, worker: str, queues: Sequence[str]) -> bool:
        """Subscribe to the worker's hand-out channel; True once Redis may hand it jobs."""
        listener = self._listen()
        channel = f"{self.prefix}:hand:{worker}"
        if worker not in self._hands.queues:
            self._hands.queues[worker] = tuple(queues)
            listener.subscribe(channel, lambda data: self._hands.on_message(worker, data))
            await listener.ready([channel])
        return listener.healthy and listener.active(channel)

    def _give_back(self, leases: Sequence[Lease]) -> None:
        """Release handed jobs in the background (a worker retired while they were on the way)."""
        task = asyncio.get_running_loop().create_task(self._release_quietly(leases))
        self._background.add(task)  # a strong reference until it is done
        task.add_done_callback(self._background.discard)

    async def _send_confirmations(self, members: list[str]) -> None:
        """Tell Redis these hand-outs arrived (see :class:`Confirmations`)."""
        try:
            await self._scripts.command("ZREM", f"{self.prefix}:handing", *members)
        except BackendError:  # the jobs come back within a second and run again elsewhere
            log.warning("redis: could not confirm %d hand-out(s)", len(members), exc_info=True)

    async def _release_quietly(self, leases: Sequence[Lease]) -> None:
        try:
            await self.release(leases)
        except BackendError:  # the lease runs out and recover() puts the job back
            log.warning("redis: could not give back %d handed job(s)", len(leases), exc_info=True)

    async def retire(self, worker: str) -> None:
        """The worker claims nothing more: stop handing it jobs, give back what it was handed."""
        queues, handed = self._hands.retire(worker)
        self._idle_at.pop(worker, None)
        if queues:
            await self._run("retire", worker, *queues)
        if handed:
            await self.release([Lease(r.id, r.lease_token or "") for r in handed])

    async def renew(self, leases: Sequence[Lease], lease: float) -> RenewResult:
        # handed jobs no claim() has taken yet are renewed too: the worker does not know them
        waiting = self._hands.leases()
        every = [*leases, *waiting]
        if not every:
            return RenewResult(frozenset(), frozenset())
        args: list[str] = []
        for held in every:
            args += (held.job_id, held.token)
        reply = await self._run("renew", repr(float(lease)), *args)
        gone = {h.job_id for h, r in zip(every, reply, strict=True) if r == 0}
        if gone & {w.job_id for w in waiting}:
            self._hands.forget(gone)
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
        reply = await self._run("complete", batch)
        if reply.pop() == 1:
            self._dirty = True  # a lane moved on: the next claim looks
        return [r == 1 for r in reply]

    async def fail(
        self, lease: Lease, error: ErrorInfo, *, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        final = JobStatus.DEAD if dead else JobStatus.FAILED
        skew = await self._clock.skew() if retry_at is not None else 0.0
        reply = await self._run(
            "fail", lease.job_id, lease.token, dump_json(error), shifted(retry_at, skew),
            final.value, "",
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
        # '' tells the script "no lease"; a lease with an empty token holds nothing: a token
        # no job ever has (a space) keeps it fenced out, as on every backend
        token = "" if lease is None else (lease.token or " ")
        reply = await self._run(
            "cancel", job_id, token,
            "" if error is None else dump_json(error),
        )
        return None if reply is None else record(reply)

    async def retry(self, job_id: str) -> JobRecord | None:
        reply = await self._run("retry", job_id)
        self._wake.set()
        return None if reply is None else record(reply)

    async def recover(self, max_lost: int | None = None) -> list[str]:
        error = dump_json(worker_lost(max_lost or 0))
        return list(await self._run("recover", _RECOVER_BATCH, max_lost or 0, error))

    async def purge(self, before: datetime) -> int:
        """Delete finished jobs that finished before ``before`` (besides the ``retention`` TTL)."""
        total = 0
        while True:
            done = int(await self._run("purge", ts(before), _RECOVER_BATCH))
            total += done
            if done < _RECOVER_BATCH:
                return total

    async def progress(self, lease: Lease, fraction: float, message: str) -> bool:
        data = dump_json({"fraction": fraction, "message": message})
        return bool(await self._run("progress", lease.job_id, lease.token, data) == 1)

    # -- reads -----------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        values: list[str | None] = await self._scripts.command(
            "HMGET", self._job_key(job_id), *FIELDS
        )
        return None if values[0] is None else record(values)

    async def list_jobs(self, flt: JobFilter) -> list[JobRecord]:
        reply = await self._run(
            "list", flt.queue or "", "" if flt.status is None else flt.status.value,
            flt.task or "", flt.limit, flt.offset, _LIST_BUDGET + flt.offset + flt.limit,
        )
        return [record(values) for values in reply]

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
        client = self._scripts.opened()
        task = asyncio.current_task()
        asked = 0 if task is None else task.cancelling()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self._job_key(job_id), "cancel_requested")
                flags = await pipe.execute()
        except RedisError as exc:
            honour_cancel(task, asked)
            raise BackendError(f"redis cancel_requested: {exc}") from exc
        honour_cancel(task, asked)
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag == "1"}

    # -- waiting ---------------------------------------------------------------------------
    async def wait_for_jobs(
        self, queues: Sequence[str], timeout: float, worker: str | None = None
    ) -> None:
        """Wait for a wake-up published on the queues' channels, or for the next due job."""
        if self._hands.any():
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
        registered = self._idle_at.get(worker) if worker is not None else None
        if registered is not None:  # claim again before its idle registration runs out
            timeout = min(timeout, max(0.0, registered + _IDLE_REFRESH - elapsed()))
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
