"""What a running task may ask for: who it is, whether it was cancelled, and a way to report progress.

Declare a parameter annotated ``Context`` and the worker passes one in; it is never part of the
payload. It works the same in ``async def``, ``def`` (thread) and ``cpu=True`` (process) tasks:
``ctx.meta`` is the job's metadata, ``ctx.state`` what the worker's lifespan yielded (in a
``cpu=True`` task: what the lifespan yielded in that process).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import MappingProxyType
from typing import Any

from conveyor.errors import OptionError
from conveyor.model import EMPTY_META

__all__ = ["Context"]

#: stores a report; may return an awaitable that completes once the report is stored
Reporter = Callable[[float, str], Awaitable[Any] | None]

#: the state of a worker without a lifespan
EMPTY_STATE: Mapping[str, Any] = MappingProxyType({})


class _Sent:
    """The handle ``progress()`` returns: already sent; ``await`` it to wait until it is stored."""

    __slots__ = ("_task",)

    def __init__(self, task: Awaitable[Any] | None) -> None:
        self._task = task

    def __await__(self) -> Generator[Any, None, None]:
        if self._task is not None:
            yield from self._task.__await__()


class Context:
    """The running attempt of one job, as its task sees it."""

    __slots__ = (
        "_cancelled", "_loop", "_report", "attempt", "job_id", "meta", "queue", "state", "task",
    )

    def __init__(
        self, *, job_id: str, task: str, queue: str, attempt: int,
        report: Reporter | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        meta: Mapping[str, str] = EMPTY_META,
        state: Mapping[str, Any] = EMPTY_STATE,
    ) -> None:
        self.job_id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt  # 1 for the first attempt
        #: the job's metadata (``task.options(meta=...)``, middlewares): read-only
        self.meta = meta
        #: what the worker's lifespan yielded (``Queue(lifespan=...)``); empty without one
        self.state = state
        self._report = report
        self._loop = loop
        # a plain flag: set on the loop, read from the task's thread (one attribute store is
        # atomic); a threading.Event would cost a lock and a condition per attempt
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<Context job={self.job_id} task={self.task} attempt={self.attempt}>"

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or timed out: a ``def`` task should return soon."""
        return self._cancelled

    def _cancel(self) -> None:
        self._cancelled = True

    def progress(self, fraction: float, message: str = "") -> _Sent:
        """Report progress (``fraction`` from 0 to 1) to whoever watches the job.

        Reports are coalesced: the latest wins, stored at most every few hundredths of a second,
        and the last one always before the job's outcome. Calling it costs next to nothing, even
        thousands of times a second. In ``async def`` code ``await`` it to have the report stored
        now (it returns once stored); in ``def`` and ``cpu=True`` code just call it.
        """
        if (
            isinstance(fraction, bool) or not isinstance(fraction, int | float)
            or not 0.0 <= fraction <= 1.0
        ):
            raise OptionError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
        report = self._report
        if report is None:
            return _Sent(None)
        out = report(float(fraction), _clean(str(message)))
        if out is None:
            return _Sent(None)
        if not asyncio.iscoroutine(out):
            return _Sent(out)  # the worker's writer: already taken, awaiting only hurries it
        # a reporter that stores as it goes (a coroutine): run it on the worker's loop
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            return _Sent(asyncio.ensure_future(out))
        fut = asyncio.run_coroutine_threadsafe(_awaited(out), loop)
        # a lost report must not fail the task; the worker logs it
        with contextlib.suppress(Exception):
            fut.result(timeout=30)
        return _Sent(None)


#: longest progress message stored, in characters (a longer one is cut, with an ellipsis)
MAX_PROGRESS_MESSAGE = 1000


def _clean(message: str) -> str:
    """A message every backend and JSON reader takes: bounded, valid Unicode (no lone surrogates)."""
    if len(message) > MAX_PROGRESS_MESSAGE:
        message = message[: MAX_PROGRESS_MESSAGE - 1] + "\u2026"
    if not message.isascii():
        message = message.encode("utf-8", "replace").decode("utf-8")
    return message


async def _awaited(aw: Awaitable[Any]) -> Any:
    return await aw
