"""A pool of child processes for ``cpu=True`` tasks, where one job's process can be killed.

``concurrent.futures.ProcessPoolExecutor`` cannot stop one running call, so cancel and timeout
could not keep their promise with it. Here each child runs one job at a time; cancelling a job
kills its child and a fresh one takes its place. Children are started with ``spawn`` (safe beside
threads) and find a task by importing its module, so a ``cpu=True`` task must be a module-level
function (decorated, or registered with ``queue.task(cpu=True)(fn)``). Messages are JSON over a
pipe: nothing is pickled.

Children ignore SIGINT and SIGTERM: a Ctrl-C or a service stop reaches the whole process group,
and shutdown is the worker's call (drain within grace, then kill and put back). A child whose
worker is gone exits on its own. At shutdown idle children are let go (their pipe closed): they
end the queue's lifespan and exit; busy ones are killed.

A child runs the queue's lifespan itself: it imports the queue by the name :func:`locate` finds
for it (so a queue with a lifespan and cpu tasks is a module-level global), and the child's log
records come back here, to be logged inside the job's attempt.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from conveyor.logs import current_job
from conveyor.model import ErrorInfo
from conveyor.worker.child import child_main

if TYPE_CHECKING:
    from conveyor.queue import Queue

__all__ = ["ChildInterrupted", "ProcessPool", "RemoteError", "locate"]

#: seconds an idle child has at shutdown to end its lifespan and exit before it is killed
CHILD_EXIT_GRACE = 5.0


def locate(obj: object) -> str | None:
    """``module:name`` of a module-level global that is ``obj`` (how a child imports it), or None."""
    for name, module in list(sys.modules.items()):
        if name == "__mp_main__" or module is None:
            continue
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if value is obj:
                return f"{name}:{attr}"
    return None


def _relog(child_pid: int, message: dict[str, Any]) -> None:
    """Log a record a child sent, here: inside the job's attempt when it came from the job."""
    logger = logging.getLogger(message.get("name") or "root")
    level = int(message.get("level", logging.INFO))
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(
        logger.name, level, str(message.get("file", "")), int(message.get("line") or 0),
        str(message.get("msg", "")), (), None, func=message.get("func"),
    )
    record.created = float(message.get("created") or time.time())
    record.process = child_pid
    record.exc_text = message.get("exc")
    if message.get("in_job"):
        logger.handle(record)
        return
    token = current_job.set(None)  # said while the child started: not the job's
    try:
        logger.handle(record)
    finally:
        current_job.reset(token)


class RemoteError(Exception):
    """A task raised in a child process; ``info`` is its stored form (type, message, traceback).

    ``permanent`` is true when another attempt cannot help (bad arguments, an unencodable result).
    """

    def __init__(self, info: dict[str, str], *, permanent: bool = False) -> None:
        super().__init__(info.get("message", ""))
        self.info: ErrorInfo = {
            "type": info.get("type", "Exception"), "message": info.get("message", ""),
            "traceback": info.get("traceback", ""),
        }
        self.permanent = permanent


class ChildInterrupted(Exception):
    """A child process was ended by SIGINT, SIGTERM or SIGHUP: shutdown, not the task's failure."""


# signals that mean "stop" when they reach a child with its process group (Ctrl-C, `timeout`,
# systemd's stop): the worker decides about shutdown, so a child that died of one is put back
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# pools with children, killed at interpreter exit: multiprocessing's own exit hook would send them
# SIGTERM, which they ignore, and then wait for them forever
_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()
_exit_hook = threading.Lock()
_exit_hooked: list[bool] = []  # one entry once the hook is registered


def _close_live_pools() -> None:
    for pool in list(_live_pools):
        pool.close()


@dataclass(slots=True, eq=False)
class _Child:
    process: BaseProcess
    conn: multiprocessing.connection.Connection


class ProcessPool:
    """Up to ``size`` child processes, started on first use."""

    def __init__(self, size: int | None = None, queue: Queue | None = None) -> None:
        self.size = size or os.cpu_count() or 1
        self.queue = queue
        self._startup: dict[str, Any] | None = None  # what each child is started with
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Child] = []
        self._slots: asyncio.Semaphore | None = None
        self._all: set[_Child] = set()
        self._lock = threading.Lock()  # children are started in executor threads
        self._closed = False
        self._orphans: list[asyncio.Future[_Child]] = []  # starting for jobs cancelled meanwhile

    def _start_child(self) -> _Child:
        with _exit_hook:
            if not _exit_hooked:
                # registered after multiprocessing's hook, so it runs before it
                atexit.register(_close_live_pools)
                _exit_hooked.append(True)
            _live_pools.add(self)
        if self._startup is None:
            queue = self.queue
            self._startup = {
                "queue": locate(queue) if queue is not None and queue.worker_lifespan else None,
                "log_level": logging.getLogger().getEffectiveLevel(),
            }
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=child_main, args=(child, os.getpid(), self._startup), daemon=True,
            name="conveyor-cpu",
        )
        process.start()
        child.close()
        started = _Child(process, parent)
        with self._lock:
            closed = self._closed
            if not closed:
                self._all.add(started)
        if closed:  # the pool closed while this one was starting: it must not outlive it
            self._kill(started)
            raise RuntimeError("the process pool is closed")
        return started

    def _kill(self, child: _Child) -> None:
        with self._lock:
            self._all.discard(child)
        with contextlib.suppress(Exception):
            child.process.kill()
        with contextlib.suppress(Exception):
            child.conn.close()

    async def _checkout(self, loop: asyncio.AbstractEventLoop) -> _Child:
        """An idle child, or one still starting for a cancelled job, or a new one."""
        if self._idle:
            return self._idle.pop()
        starting = (
            self._orphans.pop() if self._orphans else loop.run_in_executor(None, self._start_child)
        )
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            # the child starts anyway: the next job takes it, or it waits idle (killed on close)
            self._orphans.append(starting)
            starting.add_done_callback(self._adopt)
            raise

    def _adopt(self, starting: asyncio.Future[_Child]) -> None:
        """A child started for a cancelled job that no later job took: idle, or killed if closed."""
        if starting not in self._orphans:
            return
        self._orphans.remove(starting)
        if starting.cancelled() or starting.exception() is not None:
            return
        child = starting.result()
        if self._closed:
            self._kill(child)
        else:
            self._idle.append(child)

    async def run(
        self, task: Any, record: Any, report: Callable[[float, str], object] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> Any:
        """Run ``task`` on the stored arguments of ``record`` in a child; return its JSON result.

        ``on_start`` is called once the child has taken the job up (a fresh child first has to
        start Python): the job's timeout counts from there.
        Cancelling the awaiting coroutine kills the child. A task error is raised as
        :class:`RemoteError`; a child ended by a stop signal as :class:`ChildInterrupted`.
        """
        if self._closed:
            raise RuntimeError("the process pool is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        loop = asyncio.get_running_loop()
        request = json.dumps({
            "module": task.fn.__module__, "qualname": task.fn.__qualname__, "name": task.name,
            "args": record.args, "kwargs": record.kwargs, "job_id": record.id,
            "queue": record.queue, "attempt": record.attempts,
            "meta": dict(getattr(record, "meta", None) or {}),
        }).encode()
        async with self._slots:
            child = await self._checkout(loop)
            try:
                await loop.run_in_executor(None, child.conn.send_bytes, request)
                while True:
                    raw = await loop.run_in_executor(None, child.conn.recv_bytes)
                    reply = json.loads(raw)
                    if "started" in reply:
                        if on_start is not None:
                            on_start()
                        continue
                    if "progress" in reply:
                        if report is not None and reply.get("job") == record.id:
                            fraction, message = reply["progress"]
                            with contextlib.suppress(Exception):
                                report(fraction, message)
                        continue
                    if "log" in reply:
                        with contextlib.suppress(Exception):
                            _relog(child.process.pid or 0, reply["log"])
                        continue
                    break
            except asyncio.CancelledError:
                self._kill(child)
                raise
            except (EOFError, OSError) as exc:
                # reap it to learn how it ended (a stop signal is shutdown, not a task failure)
                await loop.run_in_executor(None, child.process.join, 2.0)
                code = child.process.exitcode
                self._kill(child)
                if code is not None and -code in _STOP_SIGNALS:
                    raise ChildInterrupted(
                        f"the task's process was ended by {signal.Signals(-code).name}"
                    ) from None
                raise RemoteError({
                    "type": "ProcessDied",
                    "message": f"the task's process ended unexpectedly (exit code {code}): {exc!r}",
                    "traceback": "",
                }) from None
            if self._closed or reply.get("retire"):
                self._kill(child)
            else:
                self._idle.append(child)
        if "error" in reply:
            raise RemoteError(reply["error"], permanent=bool(reply.get("permanent")))
        return reply["ok"]

    async def shutdown(self, grace: float = CHILD_EXIT_GRACE) -> None:
        """Let idle children end their lifespan and exit (within ``grace`` seconds); kill the rest."""
        with self._lock:
            self._closed = True
        idle, self._idle = self._idle, []
        for child in idle:
            with contextlib.suppress(Exception):
                child.conn.close()  # the child reads EOF: it ends its lifespan and returns

        def wait() -> None:
            deadline = time.monotonic() + grace
            for child in idle:
                child.process.join(max(0.0, deadline - time.monotonic()))

        if idle:
            await asyncio.get_running_loop().run_in_executor(None, wait)
        self.close()

    def close(self) -> None:
        """Stop every child, and any that is still starting."""
        with self._lock:
            self._closed = True
            children = list(self._all)
        for child in children:
            self._kill(child)
        self._idle.clear()
