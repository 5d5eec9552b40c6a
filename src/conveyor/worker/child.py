"""The main loop of a ``cpu=True`` child process (the parent side is ``procpool``).

A child runs one job per request read from its pipe and answers with JSON: a ``started`` note
(the job's timeout counts from there), coalesced progress reports, then the result or the error.
Its log records go to the worker too (``log`` messages), which logs them inside the job's attempt.
It ignores SIGINT and SIGTERM (shutdown is its worker's call) and exits when its worker is gone.

When the queue has a lifespan, the child enters it once when it starts, on a private event loop
(its state is ``ctx.state``), and leaves it when its worker closes the pipe. A lifespan that
fails to start fails the first job sent to the child with a ``StartupError``, and the child exits.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from conveyor.errors import ConfigError

__all__ = ["child_main", "find_object", "in_cpu_process"]

_in_child: list[bool] = []  # one entry in a cpu process


def in_cpu_process() -> bool:
    """True in a ``cpu=True`` task's process (where a lifespan may set up less, or other things)."""
    return bool(_in_child)

#: seconds between two progress messages of a child (reports in between: the latest wins)
_PROGRESS_WINDOW = 0.05


def find_object(spec: str) -> Any:
    """The object ``module:qual.name`` names (``__main__`` being the worker's main module)."""
    module, _, qualname = spec.partition(":")
    return _resolve(module, qualname)


def _resolve(module_name: str, qualname: str) -> Any:
    if module_name == "__main__":
        module = sys.modules.get("__mp_main__") or sys.modules["__main__"]
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _watch_parent(parent: int) -> None:
    """Exit when the worker that started this child is gone (nothing is left to report to)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


class _Channel:
    """The pipe to the worker: whole messages from any thread, progress coalesced."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._latest: tuple[str, float, str] | None = None
        threading.Thread(target=self._pump, name="conveyor-progress", daemon=True).start()

    def send(self, payload: dict[str, Any] | str) -> None:
        """Send one message; every progress report still pending goes first."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        with self._send_lock:
            with self._cond:
                latest, self._latest = self._latest, None
            if latest is not None:
                self._send_progress(latest)
            self._conn.send_bytes(text.encode())

    def progress(self, job_id: str, fraction: float, message: str) -> None:
        """Keep the latest report; the pump sends it within the window."""
        with self._cond:
            self._latest = (job_id, fraction, message)
            self._cond.notify()

    def _send_progress(self, latest: tuple[str, float, str]) -> None:
        job_id, fraction, message = latest
        self._conn.send_bytes(
            json.dumps({"progress": [fraction, message], "job": job_id}).encode()
        )

    def _pump(self) -> None:
        while True:
            with self._cond:
                while self._latest is None:
                    self._cond.wait()
            with self._send_lock:
                with self._cond:
                    latest, self._latest = self._latest, None
                if latest is not None:
                    try:
                        self._send_progress(latest)
                    except OSError:
                        return  # the worker is gone; the main loop sees it too
            time.sleep(_PROGRESS_WINDOW)


class _Forward(logging.Handler):
    """Sends this process's log records to the worker, which logs them with the job's fields."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel
        self.in_job = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc = record.exc_text or (
                "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else None
            )
            self.channel.send({"log": {
                "name": record.name, "level": record.levelno, "msg": record.getMessage(),
                "exc": exc, "created": record.created, "in_job": self.in_job,
                "file": record.pathname, "line": record.lineno, "func": record.funcName,
            }})
        except Exception:
            self.handleError(record)


class _Lifespan:
    """The queue's lifespan in this process, on a private event loop."""

    def __init__(self, spec: str | None) -> None:
        self.state: Mapping[str, Any] = {}
        self.failure: BaseException | None = None
        self._exit: Callable[[], object] | None = None
        if spec is None:
            return
        try:
            queue = find_object(spec)
            loop = asyncio.new_event_loop()
            cm = queue.worker_lifespan(queue)
            state = loop.run_until_complete(cm.__aenter__())
            if state is not None and not isinstance(state, Mapping):
                raise ConfigError(f"a lifespan yields a mapping of state or None, not {type(state).__name__}")
            self.state = state or {}

            def leave() -> None:
                try:
                    loop.run_until_complete(cm.__aexit__(None, None, None))
                finally:
                    loop.close()

            self._exit = leave
        except BaseException as exc:  # the lifespan's own SystemExit too: reported, not obeyed
            self.failure = exc

    def close(self) -> None:
        if self._exit is not None:
            try:
                self._exit()
            except BaseException:
                logging.getLogger("conveyor.worker").exception("the cpu process's lifespan failed to end")


def child_main(
    conn: multiprocessing.connection.Connection, parent: int, startup: dict[str, Any] | None = None
) -> None:
    """Run one job per request until the pipe closes.

    ``startup``: ``queue`` (``module:name`` of the queue whose lifespan to run, or None) and
    ``log_level`` (the worker's; records at or above it are sent to the worker).
    """
    # Ctrl-C and SIGTERM to the whole process group are the worker's to handle: it drains or
    # puts back this job, and kills this process when it decides to
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    _in_child.append(True)
    startup = startup or {}

    from conveyor.context import Context
    from conveyor.errors import ArgumentError, NotSerializable, UnknownTask
    from conveyor.serde import TaskSignature, error_info
    from conveyor.task import Task

    permanent = (ArgumentError, NotSerializable, UnknownTask)
    signatures: dict[tuple[str, str], tuple[Any, TaskSignature]] = {}
    channel = _Channel(conn)
    forward = _Forward(channel)
    root = logging.getLogger()
    root.handlers[:] = [forward]
    root.setLevel(startup.get("log_level", logging.WARNING))
    lifespan = _Lifespan(startup.get("queue"))

    def find(module: str, qualname: str, name: str) -> tuple[Any, TaskSignature]:
        found = signatures.get((module, qualname))
        if found is None:
            obj = _resolve(module, qualname)
            if isinstance(obj, Task):
                found = (obj.fn, obj.signature)
            elif callable(obj):  # registered as queue.task(cpu=True)(fn): the plain function
                found = (obj, TaskSignature(obj, context_type=Context, name=name))
            else:
                raise ConfigError(f"{module}.{qualname} is not a function in the child process")
            signatures[(module, qualname)] = found
        return found

    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            # the worker is done with this process: end the lifespan, logging to stderr now
            root.handlers[:] = [logging.StreamHandler()]
            lifespan.close()
            return
        if lifespan.failure is not None:
            info = error_info(lifespan.failure)
            info["message"] = (
                f"the cpu process did not start: the queue's lifespan raised {info['type']}: "
                f"{info['message']}"
            )
            info["type"] = "conveyor.errors.StartupError"
            channel.send({"error": info, "permanent": False, "retire": True})
            return
        channel.send('{"started":true}')
        forward.in_job = True
        reply: str
        try:
            name, job_id = request["name"], request["job_id"]
            fn, signature = find(request["module"], request["qualname"], name)
            injected: dict[str, Any] = {}
            if signature.context_params:

                def report(fraction: float, message: str, job_id: str = job_id) -> None:
                    channel.progress(job_id, fraction, message)

                ctx = Context(
                    job_id=job_id, task=name, queue=request["queue"],
                    attempt=request["attempt"], report=report,
                    meta=request.get("meta") or {}, state=lifespan.state,
                )
                injected = dict.fromkeys(signature.context_params, ctx)
            args, kwargs = signature.decode(request["args"], request["kwargs"], injected)
            value = signature.encode_result(fn(*args, **kwargs))
            try:
                reply = json.dumps({"ok": value}, separators=(",", ":"), allow_nan=False)
            except (ValueError, TypeError, RecursionError) as exc:
                raise NotSerializable(
                    f"{name}() return value cannot be stored as JSON: {exc}"
                ) from None
        except BaseException as exc:  # the task's own SystemExit, KeyboardInterrupt... too
            reply = json.dumps({"error": error_info(exc), "permanent": isinstance(exc, permanent)})
        forward.in_job = False
        channel.send(reply)
