"""Progress reports of one attempt, coalesced: the latest wins, at most one write per window.

A task may report progress thousands of times a second (a tight loop in a thread or a child
process); each report used to be one backend write. Here reports only replace the pending one; a
writer task on the worker's loop stores the latest at most once per ``window`` seconds, and the
attempt stores the very last one before its verdict. ``await ctx.progress(...)`` asks for the
report to be stored now and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.backends.base import Backend, Lease

__all__ = ["WINDOW", "ProgressWriter", "Stored"]

log = logging.getLogger("conveyor.worker")

#: seconds between two progress writes of one job (reports in between: the latest wins)
WINDOW = 0.05


class Stored:
    """What a report returns: await it to have the report (or a later one) stored now."""

    __slots__ = ("_seq", "_writer")

    def __init__(self, writer: ProgressWriter, seq: int) -> None:
        self._writer = writer
        self._seq = seq

    def __await__(self) -> Generator[Any, None, None]:
        return self._writer.stored(self._seq).__await__()


class ProgressWriter:
    """Coalesces the progress reports of one running attempt; thread-safe ``report``."""

    def __init__(
        self, backend: Backend, lease: Lease, loop: asyncio.AbstractEventLoop, window: float = WINDOW
    ) -> None:
        self._backend = backend
        self._lease = lease
        self._loop = loop
        self._window = window
        self._lock = threading.Lock()  # reports arrive from task threads too
        self._latest: tuple[float, str] | None = None
        self._seq = 0  # reports received
        self._stored_seq = 0  # reports stored (or superseded by a stored one)
        self._scheduled = False  # a writer task runs or is about to start
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # someone awaits a report: skip the rest of the window
        self._last_write = -window
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def report(self, fraction: float, message: str) -> Stored:
        """Take a report from any thread; it replaces any report not yet stored."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            if self._closed:  # after the verdict: nothing more is stored
                return Stored(self, 0)
            self._latest = (fraction, message)
            if self._scheduled:
                return Stored(self, seq)
            self._scheduled = True
        if _on_loop(self._loop):
            self._start()
        else:
            self._loop.call_soon_threadsafe(self._start)
        return Stored(self, seq)

    async def stored(self, seq: int) -> None:
        """Return once report ``seq`` (or a later one) is stored, asking for it to go now."""
        if seq <= self._stored_seq:
            return
        fut = self._loop.create_future()
        self._waiters.append((seq, fut))
        self._hurry.set()
        if self._writer is None or self._writer.done():
            self._start()
        await asyncio.shield(fut)

    async def close(self, *, store: bool = True) -> None:
        """Stop taking reports; with ``store``, write the last one now (before the verdict)."""
        with self._lock:
            self._closed = True
            if not store:
                self._latest = None
        if store and self._latest is not None and (self._writer is None or self._writer.done()):
            self._start()
        writer = self._writer
        if writer is not None and not writer.done():
            self._hurry.set()
            await asyncio.shield(writer)
        self._wake_waiters(self._seq)

    def _start(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(
                self._run(), name=f"conveyor:progress:{self._lease.job_id}"
            )

    async def _run(self) -> None:
        loop = self._loop
        while True:
            wait = self._last_write + self._window - loop.time()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)
            self._hurry.clear()
            with self._lock:
                latest, seq = self._latest, self._seq
                self._latest = None
                if latest is None:
                    self._scheduled = False
                    self._wake_waiters(seq)
                    return
            self._last_write = loop.time()
            await self._write(*latest)
            self._wake_waiters(seq)

    async def _write(self, fraction: float, message: str) -> None:
        try:
            stored = await self._backend.progress(self._lease, fraction, message)
        except Exception:
            # a lost report must not fail the task; the next one (or the verdict) carries on
            log.warning("job %s: storing progress failed", self._lease.job_id, exc_info=True)
            return
        if not stored:
            log.warning("job %s: progress not stored (lease lost)", self._lease.job_id)

    def _wake_waiters(self, seq: int) -> None:
        self._stored_seq = max(self._stored_seq, seq)
        keep = []
        for wanted, fut in self._waiters:
            if wanted <= self._stored_seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((wanted, fut))
        self._waiters = keep


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
