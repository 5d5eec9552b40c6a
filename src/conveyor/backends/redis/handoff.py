"""Hand-off bookkeeping: jobs Redis claimed for an idle worker of this process.

A worker whose claim came back short registers as idle for a moment, and the next enqueue claims
the job for it inside its own script and publishes the record on ``<prefix>:hand:<worker>``
(``hand_out`` in ``lua/lib.lua``). :class:`HandOffs` keeps what arrived until the worker's next
``claim()`` takes it, without a round trip. A message that got lost comes back with the worker's
next claim; whichever copy arrives first wins (by lease token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from conveyor.backends.base import Lease
from conveyor.backends.redis.records import record as to_record
from conveyor.model import JobRecord

__all__ = ["HandOffs"]

log = logging.getLogger("conveyor.redis")

_TOKENS_KEPT = 10_000


class HandOffs:
    """Per worker id: the jobs handed to it and not taken yet, and its hand-out queues."""

    def __init__(
        self,
        wake: Callable[[], None],
        give_back: Callable[[Sequence[Lease]], None],
        confirm: Callable[[JobRecord], None],
    ) -> None:
        self._wake = wake
        self._give_back = give_back
        self._confirm = confirm
        self.waiting: dict[str, list[JobRecord]] = {}
        #: worker id -> the queues it is registered idle on (it listens on its channel)
        self.queues: dict[str, tuple[str, ...]] = {}
        self.retired: set[str] = set()
        # tokens of handed jobs already taken in, oldest first (a bounded ordered set)
        self._tokens: dict[str, None] = {}
        self.just_handed = False

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
        if not self.first_copy(record):
            return  # a claim brought it already
        if worker in self.retired:  # it stopped claiming while the job was on its way
            self._give_back([Lease(record.id, record.lease_token)])
            return
        self.waiting.setdefault(worker, []).append(record)
        self._wake()
        # Redis takes the job back unless told within a second that this worker has it
        self._confirm(record)

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
