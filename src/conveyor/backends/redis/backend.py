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

from conveyor.backends.base import Ack, Backend, JobFilter, Lease, RenewResult, worker_lost
from conveyor.backends.redis.connection import Scripts, honour_cancel
from conveyor.backends.redis.handoff import HandOffs
from conveyor.backends.redis.listener import Handler, Latch, Listener
from conveyor.backends.redis.records import FIELDS, dt, record, ts
from conveyor.errors import BackendError, ConfigError, PayloadTooLarge
from conveyor.model import ErrorInfo, Event, JobRecord, JobStatus, utcnow
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
# seconds a measurement of the wall clock's offset from Redis' is used before it is taken again
_SKEW_REFRESH = 30.0
# a measured offset at most this big (or within the reading's round trip) is taken as none
_SKEW_IGNORED = 0.05
# One enqueue is one script, and Redis serves nobody else while a script runs (about 30 µs per
# job): 50,000 jobs hold it for one to two seconds. Bigger batches are refused before anything
# is written (splitting them would break all-or-nothing); see docs/redis.md.
MAX_ENQUEUE_JOBS = 50_000
# half of Redis' default proto-max-bulk-len (512 MB): the batch travels as one argument
MAX_ENQUEUE_BYTES = 256 << 20


def _shifted(at: datetime | None, skew: float) -> str:
    """A due time of this process's clock, as a timestamp of the Redis clock ('' for none)."""
    return "" if at is None else repr(at.timestamp() - skew)


def _wall() -> float:
    """This process's wall clock (the one due times are given by), as a POSIX timestamp."""
    return utcnow().timestamp()


def _elapsed() -> float:
    """Seconds on a clock that never steps and, where the system has one, counts suspends too."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


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
        # the Redis clock read by the last claim, and our monotonic clock when its reply came:
        # together they tell the Redis time now without trusting our wall clock (it may step)
        self._redis_clock = (0.0, 0.0)
        # when our wall clock's offset from Redis' was measured (_elapsed()), and the offset
        self._clock_skew = (-_SKEW_REFRESH, 0.0)
        self._hands = HandOffs(self._wake.set, self._give_back, self._confirm)
        self._background: set[asyncio.Task[None]] = set()
        self._to_confirm: list[str] = []  # hand-outs received, "<id>\n<token>" (see _confirm)
        self._confirming: asyncio.Task[None] | None = None

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
        await self._skew()  # measured now, while nothing of ours keeps the server busy

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
        confirming, self._confirming = self._confirming, None
        if confirming is not None and not confirming.done():
            confirming.cancel()  # what it would confirm was given back by retire() above
            with contextlib.suppress(asyncio.CancelledError):
                await confirming
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        await self._scripts.close()
        self._wake_channels.clear()

    # -- plumbing --------------------------------------------------------------------------
    async def _run(self, name: str, *args: Any) -> Any:
        return await self._scripts.run(name, *args)

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _listen(self) -> Listener:
        if self._listener is None:
            self._listener = Listener(self._scripts.connect, on_reconnect=self._wake.set)
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
        if len(jobs) > MAX_ENQUEUE_JOBS:
            raise PayloadTooLarge(
                f"{len(jobs)} jobs in one enqueue: Redis takes at most {MAX_ENQUEUE_JOBS} per call "
                "(one atomic script blocks the server while it runs); split the batch"
            )
        # due times move onto the Redis clock here (the offset is measured on a quiet round trip)
        skew = await self._skew() if any(job.scheduled_for for job in jobs) else 0.0
        # one JSON argument for the batch: far cheaper to send than 14 arguments per job; args,
        # kwargs and retry ride along as JSON text inside it, so Lua stores them byte for byte
        batch = dump_json([
            [job.id, job.task, job.queue, dump_json(job.args), dump_json(job.kwargs), str(job.priority),
             job.key, job.unique, str(job.max_attempts),
             "" if job.timeout is None else repr(float(job.timeout)), ts(job.enqueued_at),
             _shifted(job.scheduled_for, skew), "" if job.retry is None else dump_json(job.retry),
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
            # the caller is about to start the jobs it was just handed: let them begin before
            # this claim spends its time on a round trip
            self._hands.just_handed = False
            await asyncio.sleep(0)
        self._hands.retired.discard(worker)
        handoff = await self._listen_for_hand_outs(worker, queues)
        # tokens: a random prefix per call and the job's place in the batch; unique, unguessable
        prefix = secrets.token_hex(8) + "."
        sent = _elapsed()
        reply = await self._run(
            "claim", worker, limit, repr(float(lease)), prefix, "1" if handoff else "0", *queues
        )
        due, server_now = reply[0]
        # the Redis clock as this process sees it, for hand-outs' age: anchored when the claim
        # was sent, so the estimate errs late (older hand-outs, a check more), never early; a
        # process stopped before it read the reply must not take that pause for fresh time
        self._redis_clock = (float(server_now), sent)
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
        elif len(out) < limit:
            # handed to us by pub/sub while the script ran (its copy in the reply was dropped
            # as the second one): take them now rather than at the next claim
            out += await self._still_ours(self._hands.take(worker, limit - len(out)))
        return out

    async def _still_ours(self, handed: list[JobRecord]) -> list[JobRecord]:
        """The handed jobs this worker may start: fresh ones at once, late ones once checked.

        A hand-out Redis does not hear confirmed within a second goes back to the queue and may
        run elsewhere. A record that reaches the worker late (its process was stopped, its loop
        blocked) is confirmed and checked first, a round trip taken only on this rare path, so
        a job taken back is never started here as well.
        """
        read, at = self._redis_clock
        now = read + (_elapsed() - at)
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

    async def _skew(self) -> float:
        """How far this process's wall clock is ahead of Redis', in seconds (measured anew when
        the last reading is older than ``_SKEW_REFRESH``): due times are sent on the Redis clock.

        Read with ``TIME`` on a round trip of its own, timed: the reading is trusted within half
        that round trip, so time spent queued behind another client's long script never reads as
        skew (it would if the clock were read inside the script that stores the due time).
        """
        measured, skew = self._clock_skew
        if _elapsed() - measured < _SKEW_REFRESH:
            return skew
        best: tuple[float, float] | None = None
        for _ in range(3):
            before = _wall()
            sec, usec = await self._scripts.command("TIME")
            after = _wall()
            sample = (after - before, (before + after) / 2 - (int(sec) + int(usec) / 1e6))
            if best is None or sample[0] < best[0]:
                best = sample
            if sample[0] < 0.005:  # a quiet round trip: good enough
                break
        assert best is not None
        # clocks within _SKEW_IGNORED of each other count as one (NTP keeps hosts far closer), so
        # on a synced host `at=` is stored exactly as given, not moved by the reading's jitter
        skew = best[1] if abs(best[1]) > max(_SKEW_IGNORED, best[0]) else 0.0
        self._clock_skew = (_elapsed(), skew)
        return skew

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

    def _confirm(self, job: JobRecord) -> None:
        """Tell Redis a hand-out arrived, batched with any others received meanwhile.

        It runs beside the job (never before it starts): one round trip per batch of hand-outs.
        """
        self._to_confirm.append(f"{job.id}\n{job.lease_token}")
        if self._confirming is None or self._confirming.done():
            task = asyncio.get_running_loop().create_task(self._send_confirmations())
            self._confirming = task
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _send_confirmations(self) -> None:
        while self._to_confirm:
            members, self._to_confirm = self._to_confirm[:1000], self._to_confirm[1000:]
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
        return [r == 1 for r in await self._run("complete", batch)]

    async def fail(
        self, lease: Lease, error: ErrorInfo, *, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        final = JobStatus.DEAD if dead else JobStatus.FAILED
        skew = await self._skew() if retry_at is not None else 0.0
        reply = await self._run(
            "fail", lease.job_id, lease.token, dump_json(error), _shifted(retry_at, skew),
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
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
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
