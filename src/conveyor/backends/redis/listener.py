"""Push from Redis: one pub/sub connection per backend (idle workers wait on a Latch it raises).

The :class:`Listener` hands each message to the handlers of its channel, survives Redis going
away (it reconnects with backoff and reports itself unhealthy meanwhile, so waiters poll), and
never needs a worker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Handler", "Listener"]

log = logging.getLogger("conveyor.redis")

Handler = Callable[[str], None]


def _end_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop.

    redis-py (seen with 8.1) can swallow a cancel that lands while it connects or reads, or turn
    it into a connection error or timeout, and go on: a listener told to stop would then read
    (or reconnect) for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Listener:
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
            # redis-py can swallow a cancel that lands mid-read and go on reading: on a closed
            # socket that read fails, and _run sees the cancel request and ends
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
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
                _end_if_cancelled()
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
                    _end_if_cancelled()
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
                _end_if_cancelled()
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
