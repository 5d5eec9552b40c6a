"""Running the Lua scripts: one connection per command from a small pool of our own.

Every script is ``lua/<name>.lua`` with ``lua/lib.lua`` prepended; it is sent by SHA and loaded
again when the server lost it (a restart or a flush). Driver errors become
:class:`~conveyor.errors.BackendError` here, with the original as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.errors import BackendError

__all__ = ["Scripts", "honour_cancel"]

SCRIPTS = (
    "enqueue", "claim", "renew", "complete", "fail", "release", "cancel", "retry", "recover",
    "progress", "events", "stats", "list", "purge", "retire", "upgrade",
)
_IDLE_CONNECTIONS = 8  # script connections kept open between commands


@functools.cache
def _load_scripts() -> dict[str, str]:
    folder = resources.files("conveyor.backends.redis").joinpath("lua")
    lib = folder.joinpath("lib.lua").read_text(encoding="utf-8")
    return {
        name: lib + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in SCRIPTS
    }


def honour_cancel(task: asyncio.Task[Any] | None, asked: int) -> None:
    """Raise CancelledError if ``task`` was asked to cancel since it had ``asked`` requests.

    redis-py (seen with 8.1) can swallow a cancel that arrives while a command is sent, or turn
    it into a connection error: the command then returns, or is retried, as if nothing had
    happened, and a worker's loop that was told to stop never does. Such a cancel is delivered
    here. A cancel the caller had already received and chose to survive (cleanup code) does not
    count: only requests that arrived during this command do.
    """
    if task is not None and task.cancelling() > asked:
        raise asyncio.CancelledError


class Scripts:
    """The client, the script connections and the scripts of one backend.

    ``prefix`` and ``retention`` are passed to every script as ``ARGV[1]`` and ``ARGV[2]``.
    """

    def __init__(self, driver_url: str, safe_url: str, prefix: str, retention: float) -> None:
        self._driver_url = driver_url
        self._safe_url = safe_url
        self._prefix = prefix
        self._retention = retention
        self.client: aioredis.Redis | None = None
        self._scripts: dict[str, tuple[str, str]] = {}  # name -> (sha1, text)
        self._idle_conns: list[AbstractConnection] = []

    async def open(self) -> None:
        """Create the connection pool and load the scripts (nothing is written)."""
        if self.client is not None:
            return
        # no socket_timeout unless the URL sets one (?socket_timeout=): TCP keepalive finds dead
        # peers. redis-py 8 defaults it to 5 s, and then sends every command from a task of its
        # own (asyncio.wait_for): a loop step and a task per command on the hot path, and a
        # command sent just before a blocking step leaves only after it
        client = aioredis.Redis.from_url(
            self._driver_url, decode_responses=True, socket_timeout=None,
            socket_connect_timeout=5.0, socket_keepalive=True,
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
            raise BackendError(f"redis at {self._safe_url}: {exc}") from exc
        self.client, self._scripts = client, scripts

    async def close(self) -> None:
        """Release every connection. Idempotent."""
        client, self.client = self.client, None
        await self._drop_idle()
        if client is not None:
            await client.aclose()

    def connect(self) -> AbstractConnection:
        """A new connection (not connected yet) with the client's settings."""
        assert self.client is not None
        pool = self.client.connection_pool
        return pool.connection_class(**pool.connection_kwargs)

    def opened(self) -> aioredis.Redis:
        """The client; BackendError when the backend is not open."""
        if self.client is None:
            raise BackendError("the Redis backend is not open (use `async with queue:`)")
        return self.client

    async def run(self, name: str, *args: Any) -> Any:
        """Run one script; driver errors become BackendError with the original as cause."""
        self.opened()
        sha, text = self._scripts[name]
        full = (self._prefix, self._retention, *args)
        task = asyncio.current_task()
        asked = 0 if task is None else task.cancelling()
        delay = 0.02
        for attempt in range(4):
            try:
                try:
                    reply = await self._command("EVALSHA", sha, 0, *full)
                except NoScriptError:  # a restarted or flushed server: load it once more
                    reply = await self._command("EVAL", text, 0, *full)
                honour_cancel(task, asked)
                return reply
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                honour_cancel(task, asked)
                # a dropped connection (Redis restarting) is tried again briefly first. If the
                # script ran but its reply was lost, running it again is safe: enqueue skips
                # ids it has, fenced verbs answer False, and a second claim's leases expire
                # and come back (at-least-once, never lost)
                if attempt == 3:
                    raise BackendError(f"redis {name}: {exc}") from exc
                # the other idle connections most likely died with this one: start afresh
                await self._drop_idle()
                await asyncio.sleep(delay)
                delay *= 4
            except RedisError as exc:
                raise BackendError(f"redis {name}: {exc}") from exc
        raise AssertionError("unreachable")

    async def command(self, *args: Any) -> Any:
        """Run one plain command; driver errors become BackendError."""
        self.opened()
        task = asyncio.current_task()
        asked = 0 if task is None else task.cancelling()
        try:
            reply = await self._command(*args)
        except (RedisError, OSError) as exc:
            honour_cancel(task, asked)
            raise BackendError(f"redis {args[0]}: {exc}") from exc
        honour_cancel(task, asked)
        return reply

    async def _drop_idle(self) -> None:
        conns, self._idle_conns = self._idle_conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.disconnect()

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
            conn = self.connect()
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
