"""Hand-off bookkeeping: jobs Redis claimed for an idle worker of this process.

A worker whose claim came back short registers as idle for a moment, and the next enqueue claims
the job for it inside its own script and publishes the record on ``<prefix>:hand:<worker>``
(``hand_out`` in ``lua/lib.lua``). :class:`HandOffs` keeps what arrived until the worker's next
``claim()`` takes it, without a round trip. A message that got lost comes back with the worker's
next claim; whichever copy arrives first wins (by lease token).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence

from conveyor.backends.base import Lease
from conveyor.backends.redis.records import record as to_record
from conveyor.model import JobRecord

__all__ = ["Confirmations", "HandOffs"]

log = logging.getLogger("conveyor.redis")

_TOKENS_KEPT = 10_000


class HandOffs:
    """Per worker id: the jobs handed to it and not taken yet, and its hand-out queues."""

    def __init__(
        self,
        wake: Callable[[], None],
        give_back: Callable[[Sequence[Lease]], None],
        confirm: Callable[[JobRecord], None],
        push: Callable[[str, JobRecord], bool],
    ) -> None:
        self._wake = wake
        self._give_back = give_back
        self._confirm = confirm
        self._push = push
        self.waiting: dict[str, list[JobRecord]] = {}
        #: worker id -> the queues it is registered idle on (it listens on its channel)
        self.queues: dict[str, tuple[str, ...]] = {}
        self.retired: set[str] = set()
        # tokens of handed jobs already taken in, oldest first (a bounded ordered set)
        self._tokens: dict[str, None] = {}
        self.just_handed = False
        # worker id -> (token prefix of its idle registration, hand-outs of it received in order)
        self._received: dict[str, tuple[str, int]] = {}

    def any(self) -> bool:
        """True when some worker has handed jobs to take."""
        return any(self.waiting.values())

    def take(self, worker: str, limit: int) -> list[JobRecord]:
        """Up to ``limit`` jobs handed to ``worker``, best first (none: an empty list)."""
        handed = self.waiting.get(worker)
        if not handed:
            return []
        self.waiting[worker] = handed[limit:]
        self.just_handed = True
        return handed[:limit]

    def keep(self, worker: str, records: Sequence[JobRecord]) -> None:
        """Records claimed for ``worker`` beyond its free slots: its next claim takes them."""
        self.waiting.setdefault(worker, []).extend(records)

    def registering(self, worker: str, prefix: str) -> int:
        """A claim with token ``prefix`` is sent: how many hand-outs of the last one arrived.

        Redis numbers the hand-outs of one registration 1, 2, ... in its ``P:handed:<worker>``
        list; the claim script skips the ones received in order (pub/sub keeps order) instead
        of reading each record again.
        """
        _, got = self._received.get(worker, ("", 0))
        self._received[worker] = (prefix, 0)
        return got

    def _arrived(self, worker: str, token: str) -> None:
        prefix, got = self._received.get(worker, ("", 0))
        # "<prefix>h<n>"; a gap (a lost message) stops the count: the claim sends the rest
        if prefix and token == f"{prefix}h{got + 1}":
            self._received[worker] = (prefix, got + 1)

    def first_copy(self, record: JobRecord) -> bool:
        """True the first time a handed job arrives (by pub/sub or with a claim), else False."""
        token = record.lease_token or ""
        if token in self._tokens:
            return False
        self._tokens[token] = None
        if len(self._tokens) > _TOKENS_KEPT:
            del self._tokens[next(iter(self._tokens))]
        return True

    def on_message(self, worker: str, data: str) -> None:
        """A record published on the worker's hand-out channel."""
        try:
            values = [None if v is False else v for v in json.loads(data)]
            record = to_record(values)
        except (ValueError, TypeError, IndexError) as exc:
            log.warning("redis: a job handed to %s cannot be decoded (%s)", worker, exc)
            return
        assert record.lease_token is not None
        self._arrived(worker, record.lease_token)
        if not self.first_copy(record):
            return  # a claim brought it already
        if worker in self.retired:  # it stopped claiming while the job was on its way
            self._give_back([Lease(record.id, record.lease_token)])
            return
        # Redis takes the job back unless told within a second that this worker has it: the
        # confirmation is on its way before the job can begin (see Confirmations)
        self._confirm(record)
        if not self.waiting.get(worker) and self._push(worker, record):
            return  # started at once (behind any handed earlier and not taken yet, else)
        self.waiting.setdefault(worker, []).append(record)
        self._wake()

    def leases(self) -> list[Lease]:
        """The leases of every handed job no claim has taken yet (renewed with the others)."""
        return [Lease(r.id, r.lease_token or "") for rs in self.waiting.values() for r in rs]

    def forget(self, gone: set[str]) -> None:
        """Drop handed jobs whose lease is lost."""
        for worker, records in self.waiting.items():
            self.waiting[worker] = [r for r in records if r.id not in gone]

    def retire(self, worker: str) -> tuple[tuple[str, ...], list[JobRecord]]:
        """``worker`` stops claiming: its queues and the jobs handed to it, to give back."""
        self.retired.add(worker)
        return self.queues.get(worker, ()), self.waiting.pop(worker, [])


class Confirmations:
    """Hand-outs received and not confirmed to Redis yet, confirmed in batches before their jobs
    begin.

    Redis takes a hand-out back unless it hears within a second that the worker has it, and a
    job's first step may hold the event loop for longer than that (blocking code in an ``async
    def``, or a burst of jobs handed at once). So the confirmation is sent first: the task that
    sends it is created as the hand-out arrives, before its job is launched, and tasks start in
    the order they were created. All that arrive before it runs share one ``ZREM``; batches do
    not wait for each other's replies.
    """

    def __init__(self, send: Callable[[list[str]], Awaitable[None]]) -> None:
        self._send = send
        self._pending: dict[str, str] = {}  # job id -> "<id>\n<token>"
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, record: JobRecord) -> None:
        """A hand-out arrived: confirm it before any job launched after this call starts."""
        self._pending[record.id] = f"{record.id}\n{record.lease_token}"
        if not self._scheduled:
            self._scheduled = True
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)  # a strong reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        self._scheduled = False
        members, self._pending = list(self._pending.values()), {}
        if members:
            await self._send(members)

    async def close(self) -> None:
        """Stop confirming (what is pending was given back)."""
        tasks = list(self._tasks)  # each one's done callback leaves the set
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pending.clear()
        self._scheduled = False
