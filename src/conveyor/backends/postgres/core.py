"""What every verb of the PostgreSQL backend shares: options, the pool, the listener, waking."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from conveyor.backends.base import Backend
from conveyor.backends.latch import Latch
from conveyor.backends.postgres.connection import Database
from conveyor.backends.postgres.listener import Handler, Listener
from conveyor.backends.postgres.options import parse_url
from conveyor.backends.postgres.schema import channels

__all__ = ["PostgresCore"]


class PostgresCore(Backend):
    """The PostgreSQL backend's plumbing; the verbs live in the mixins that subclass it."""

    #: how often result and event waiters look again, in seconds
    poll_interval = 0.02

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.options = parse_url(url, self.safe_url)
        self.schema = self.options.schema
        self.db = Database(self.options, self.safe_url)
        self._wake_channel, self._cancel_channel = channels(self.schema)
        self._wake = Latch()
        self._claim_mark = 0  # the latch's count when the last claim began
        self._cancel_watchers: set[Handler] = set()
        self._listener: Listener | None = None
        self._open_lock = asyncio.Lock()
        s = f'"{self.schema}"'
        self.s = s  # the schema, quoted, for statements
        self._sql_enqueue = (
            f"SELECT o_ord, o_id, o_status, o_existing FROM {s}.enqueue("
            "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, create or upgrade the schema, and start listening (unless ``listen=false``)."""
        async with self._open_lock:
            if self.db.pool is not None:
                return
            await self.db.open()
            if self.options.listen:
                self._listener = Listener(
                    self.db.connect,
                    {self._wake_channel: self._on_wake, self._cancel_channel: self._on_cancel},
                    on_reconnect=self._wake.set,
                )
                await self._listener.start()

    async def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema now, on a connection of its own (``conveyor migrate``);
        return the version before and after. Idempotent, and safe beside starting workers."""
        return await self.db.migrate()

    async def close(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        await self.db.close()

    # -- waking ----------------------------------------------------------------------------
    def _on_wake(self, _queue: str) -> None:
        self._wake.set()

    def _on_cancel(self, job_id: str) -> None:
        for watcher in list(self._cancel_watchers):
            watcher(job_id)

    @property
    def pushing(self) -> bool:
        """True while notifications reach this process (listening, connection up)."""
        return self._listener is not None and self._listener.healthy

    async def watch_cancellations(self, callback: Handler) -> Callable[[], None] | None:
        """Call ``callback(job_id)`` when a cancel of a running job is requested (pushed by
        NOTIFY); None in poll-only mode (the worker then polls)."""
        if self._listener is None:
            return None
        self._cancel_watchers.add(callback)
        return lambda: self._cancel_watchers.discard(callback)
