"""LISTEN/NOTIFY: one connection per backend that listens (idle workers wait on a Latch it raises).

The :class:`Listener` keeps a dedicated connection (not pooled: LISTEN is session state) on
conveyor's channels. It checks the connection when it has been quiet for ``idle`` seconds, and
when the connection drops (PostgreSQL restarting, the backend terminated, the network) it
reconnects with backoff; :attr:`healthy` is False meanwhile, so waiters fall back to a bounded
poll, and it calls ``on_reconnect`` (notifications may have been missed) once it is back. A
PostgreSQL restart never needs a worker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

__all__ = ["Handler", "Listener"]

log = logging.getLogger("conveyor.postgres")

Handler = Callable[[str], None]


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    """A callback that sets ``event`` (whatever it is called with)."""
    return lambda _: event.set()


class Listener:
    """A dedicated LISTEN connection that hands each notification to its channel's handler."""

    #: seconds without traffic after which the connection is checked with a query
    idle = 5.0
    #: seconds that check may take before the connection counts as lost
    check_timeout = 5.0

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        handlers: dict[str, Handler],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._handlers = handlers
        self._on_reconnect = on_reconnect
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self.healthy = False
        #: the server process id of the current connection (tests terminate it)
        self.server_pid: int | None = None

    async def start(self, timeout: float = 5.0) -> None:
        """Start listening; wait up to ``timeout`` seconds for the first connection."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="conveyor-postgres-listener"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)

    async def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(str(payload))
        except Exception:  # a handler's bug must not end the listener
            log.exception("postgresql listener: handler for %s failed", channel)

    async def _run(self) -> None:
        delay = 0.05
        connected_before = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                for channel in self._handlers:
                    await conn.add_listener(channel, self._dispatch)
                self.server_pid = conn.get_server_pid()
                self.healthy = True
                self._up.set()
                if connected_before:
                    log.info("postgresql listener reconnected")
                    self._on_reconnect()  # wake-ups may have been missed meanwhile
                connected_before = True
                delay = 0.05
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.idle)
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=self.check_timeout)
            except asyncio.CancelledError:
                self.healthy = False
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.debug("postgresql listener: %s", exc)
            finally:
                was_healthy, self.healthy = self.healthy, False
                if conn is not None:
                    conn.terminate()
                if was_healthy:
                    log.warning("postgresql listener lost its connection; reconnecting")
                    self._on_reconnect()  # waiters look now, then poll until it is back
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
