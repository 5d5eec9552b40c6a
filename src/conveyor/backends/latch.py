"""The latch idle workers wait on: a flag raised by a push (a wake-up, a hand-out, a reconnect).

``asyncio.wait_for(event.wait(), t)`` would wrap the wait in a task of its own; on the pickup
path every loop step counts, so a waiter parks on a bare future instead.
"""

from __future__ import annotations

import asyncio

__all__ = ["Latch"]


class Latch:
    """A flag that stays set until a waiter takes it; waking costs one loop step."""

    __slots__ = ("_flag", "_waiters", "count")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: set[asyncio.Future[None]] = set()
        #: how many times it was set: a waiter compares it with what it saw before its look
        self.count = 0

    def set(self) -> None:
        """Raise the flag and wake every waiter."""
        self._flag = True
        self.count += 1
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_and_clear(self, timeout: float) -> None:
        """Return once the flag is up (lowering it), or after ``timeout`` seconds."""
        if not self._flag and timeout > 0:
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
