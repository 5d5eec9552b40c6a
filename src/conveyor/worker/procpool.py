"""A pool of child processes for ``cpu=True`` tasks, where one job's process can be killed.

``concurrent.futures.ProcessPoolExecutor`` cannot stop one running call, so cancel and timeout
could not keep their promise with it. Here each child runs one job at a time; cancelling a job
kills its child and a fresh one takes its place. Children are started with ``spawn`` (safe beside
threads) and find a task by importing its module, so a ``cpu=True`` task must be a module-level
function. Messages are JSON over a pipe: nothing is pickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import multiprocessing
import multiprocessing.connection
import os
import sys
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from conveyor.errors import ConfigError
from conveyor.model import ErrorInfo

__all__ = ["ProcessPool", "RemoteError"]


class RemoteError(Exception):
    """A task raised in a child process; ``info`` is its stored form (type, message, traceback)."""

    def __init__(self, info: dict[str, str]) -> None:
        super().__init__(info.get("message", ""))
        self.info: ErrorInfo = {
            "type": info.get("type", "Exception"), "message": info.get("message", ""),
            "traceback": info.get("traceback", ""),
        }


def _resolve(module_name: str, qualname: str) -> Any:
    if module_name == "__main__":
        module = sys.modules.get("__mp_main__") or sys.modules["__main__"]
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _child(conn: multiprocessing.connection.Connection) -> None:
    """Child main loop: run one job per request until the pipe closes."""
    from conveyor.context import Context
    from conveyor.serde import error_info
    from conveyor.task import Task

    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            task = _resolve(request["module"], request["qualname"])
            if not isinstance(task, Task):
                raise ConfigError(
                    f"{request['module']}.{request['qualname']} is not a conveyor task in the child"
                )
            injected: dict[str, Any] = {}
            if task.signature.context_params:

                def report(fraction: float, message: str) -> None:
                    conn.send_bytes(json.dumps({"progress": [fraction, message]}).encode())

                ctx = Context(
                    job_id=request["job_id"], task=task.name, queue=request["queue"],
                    attempt=request["attempt"], report=report,
                )
                injected = dict.fromkeys(task.signature.context_params, ctx)
            args, kwargs = task.signature.decode(request["args"], request["kwargs"], injected)
            value = task.signature.encode_result(task.fn(*args, **kwargs))
            reply: dict[str, Any] = {"ok": value}
        except BaseException as exc:
            reply = {"error": error_info(exc)}
        conn.send_bytes(json.dumps(reply).encode())


@dataclass(slots=True, eq=False)
class _Child:
    process: BaseProcess
    conn: multiprocessing.connection.Connection


class ProcessPool:
    """Up to ``size`` child processes, started on first use."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or os.cpu_count() or 1
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Child] = []
        self._slots: asyncio.Semaphore | None = None
        self._all: set[_Child] = set()

    def _start_child(self) -> _Child:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_child, args=(child,), daemon=True, name="conveyor-cpu")
        process.start()
        child.close()
        started = _Child(process, parent)
        self._all.add(started)
        return started

    def _kill(self, child: _Child) -> None:
        self._all.discard(child)
        with contextlib.suppress(Exception):
            child.process.kill()
        with contextlib.suppress(Exception):
            child.conn.close()

    async def run(
        self, task: Any, record: Any, report: Any = None,
    ) -> Any:
        """Run ``task`` on the stored arguments of ``record`` in a child; return its JSON result.

        Cancelling the awaiting coroutine kills the child. A task error is raised as
        :class:`RemoteError`.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        loop = asyncio.get_running_loop()
        request = json.dumps({
            "module": task.fn.__module__, "qualname": task.fn.__qualname__,
            "args": record.args, "kwargs": record.kwargs, "job_id": record.id,
            "queue": record.queue, "attempt": record.attempts,
        }).encode()
        async with self._slots:
            child = self._idle.pop() if self._idle else await loop.run_in_executor(
                None, self._start_child
            )
            try:
                await loop.run_in_executor(None, child.conn.send_bytes, request)
                while True:
                    raw = await loop.run_in_executor(None, child.conn.recv_bytes)
                    reply = json.loads(raw)
                    if "progress" in reply:
                        if report is not None:
                            fraction, message = reply["progress"]
                            with contextlib.suppress(Exception):
                                await report(fraction, message)
                        continue
                    break
            except asyncio.CancelledError:
                self._kill(child)
                raise
            except (EOFError, OSError) as exc:
                code = child.process.exitcode
                self._kill(child)
                raise RemoteError({
                    "type": "ProcessDied",
                    "message": f"the task's process ended unexpectedly (exit code {code}): {exc!r}",
                    "traceback": "",
                }) from None
            self._idle.append(child)
        if "error" in reply:
            raise RemoteError(reply["error"])
        return reply["ok"]

    def close(self) -> None:
        """Stop every child."""
        for child in list(self._all):
            self._kill(child)
        self._idle.clear()
