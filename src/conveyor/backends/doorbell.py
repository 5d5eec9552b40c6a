"""A doorbell between processes that share one SQLite file: push wake-ups without a server.

Every process that waits on the database binds a Unix datagram socket in a folder beside the
file; a process that commits a change sends one byte to each socket there. Waiters wake within
microseconds instead of polling, and an idle worker costs nothing. A socket whose process died
refuses the datagram and is removed by the next ring. Where Unix sockets are not available the
caller falls back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["ChangeFeed", "Doorbell"]

_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, fewer elsewhere
_counter = itertools.count()


def _folder(db_path: Path) -> Path:
    """Where the sockets for ``db_path`` live: beside it, or under the temp dir if that is too long."""
    beside = Path(f"{db_path.resolve()}-wake")
    if len(str(beside)) + 24 <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha1(str(db_path.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"conveyor-wake-{digest}"


class Doorbell:
    """Ring every process waiting on one database; listen for rings from the others."""

    available = hasattr(socket, "AF_UNIX")

    def __init__(self, db_path: Path) -> None:
        self.folder = _folder(db_path)
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._address: str | None = None

    def ring(self) -> None:
        """Tell every listener that the database changed. Never raises; never blocks."""
        if not self.available:
            return
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        for name in names:
            path = str(self.folder / name)
            if path == self._address:
                continue
            try:
                self._sender.sendto(b"!", path)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # its process is gone
                # EAGAIN: the listener's buffer is full, so it is awake already

    def listen(self, on_ring: Callable[[], None], add_reader: Callable[..., object]) -> bool:
        """Bind this process's socket and call ``on_ring`` (via the loop's reader) on each ring.

        Returns False when the doorbell cannot be used here (the caller polls instead).
        """
        if self._listener is not None:
            return True
        if not self.available:
            return False
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            address = str(self.folder / f"{os.getpid()}-{next(_counter)}")
            if len(address) > _MAX_SOCKET_PATH:
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
            sock.bind(address)
        except OSError:
            return False

        def drain() -> None:
            with contextlib.suppress(OSError):
                while sock.recv(64):
                    pass
            on_ring()

        self._listener, self._address = sock, address
        add_reader(sock.fileno(), drain)
        return True

    def close(self, remove_reader: Callable[[int], object] | None = None) -> None:
        """Stop listening and remove this process's socket."""
        listener, address = self._listener, self._address
        self._listener = self._address = None
        if listener is not None:
            if remove_reader is not None:
                with contextlib.suppress(Exception):
                    remove_reader(listener.fileno())
            listener.close()
        if address is not None:
            with contextlib.suppress(OSError):
                os.unlink(address)
        if self._sender is not None:
            self._sender.close()
            self._sender = None


class ChangeFeed:
    """Counts changes to the database and lets coroutines wait for the next one.

    Changes are this process's own commits (``signal()``), rings from other processes, and, as a
    backstop, what ``data_changed`` (a cheap poll) notices while anyone waits. Waiters pass the
    ``count`` they last acted on, so a change between their look and their wait is never missed.
    """

    def __init__(
        self, doorbell: Doorbell, data_changed: Callable[[], bool], poll_interval: float
    ) -> None:
        self.count = 0
        self._doorbell = doorbell
        self._data_changed = data_changed
        self._poll_interval = poll_interval
        self._next: asyncio.Future[None] | None = None
        self._monitor: asyncio.Task[None] | None = None

    def signal(self) -> None:
        """Something changed: wake every waiter in this process."""
        self.count += 1
        fut, self._next = self._next, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, seen: int, timeout: float) -> bool:
        """Wait until a change after ``seen`` (a value of ``count``); False on timeout."""
        loop = asyncio.get_running_loop()
        if self._monitor is None:
            rung = self._doorbell.listen(self.signal, loop.add_reader)
            if self._data_changed():  # a commit since the monitor last looked
                self.signal()
            interval = 0.1 if rung else self._poll_interval
            self._monitor = loop.create_task(self._watch(interval))
        if self.count != seen:
            return True
        if self._next is None:
            self._next = loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._next), timeout)
        except TimeoutError:
            return self.count != seen
        return True

    async def _watch(self, interval: float) -> None:
        """Poll for other processes' commits while anyone waits (a backstop when rung)."""
        try:
            while True:
                await asyncio.sleep(interval)
                if self._next is None:
                    return  # nobody waits; the next waiter starts a new watch
                if self._data_changed():
                    self.signal()
        finally:
            self._monitor = None

    def close(self, remove_reader: Callable[[int], object] | None = None) -> None:
        """Stop watching and listening."""
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        self._doorbell.close(remove_reader)

