"""Watches the worker's own event loop and names the task that blocked it.

A thread looks every few milliseconds at a heartbeat the loop stamps; when the stamp is older than
the threshold the loop is stuck, and the thread reads the loop thread's current stack to say which
task function (and line) is holding it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType

__all__ = ["LoopStall", "LoopWatchdog"]

log = logging.getLogger("conveyor.worker")


@dataclass(slots=True)
class LoopStall:
    """One time the loop was blocked: for how long (so far, when reported), by what, where."""

    seconds: float
    task: str | None
    job_id: str | None
    location: str


class LoopWatchdog:
    """Report event-loop stalls longer than ``threshold`` seconds."""

    def __init__(
        self, threshold: float, code_names: Callable[[], dict[CodeType, str]],
        job_of_current: Callable[[], str | None],
    ) -> None:
        self.threshold = threshold
        self.stalls: list[LoopStall] = []
        self._code_names = code_names
        self._job_of_current = job_of_current
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = 0
        self._interval = min(0.05, threshold / 4)
        self._due = 0.0  # when the next heartbeat should run
        self._peak = 0.0  # the latest heartbeat's lateness, at most, since take_peak()

    def start(self) -> None:
        """Begin watching the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tick()
        self._thread = threading.Thread(target=self._watch, name="conveyor-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=1)

    def take_peak(self) -> float:
        """The most a heartbeat ran late since the last call (the loop's lag), in seconds."""
        peak, self._peak = self._peak, 0.0
        return peak

    def _tick(self) -> None:
        now = self._beat = time.monotonic()
        if self._due and now - self._due > self._peak:
            self._peak = now - self._due
        self._due = now + self._interval
        assert self._loop is not None
        self._handle = self._loop.call_later(self._interval, self._tick)

    def _watch(self) -> None:
        reported_beat = None
        while not self._stop.wait(self._interval):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled < self.threshold or beat == reported_beat:
                continue
            reported_beat = beat
            frame = sys._current_frames().get(self._loop_thread)
            stall = self._describe(frame, stalled)
            self.stalls.append(stall)
            log.warning(
                "event loop blocked for %.2f s by %s (job %s) at %s: use `def` (thread) or "
                "cpu=True (process) for blocking work",
                stall.seconds, stall.task or "unknown code", stall.job_id or "?", stall.location,
            )

    def _describe(self, frame: FrameType | None, stalled: float) -> LoopStall:
        names = self._code_names()
        innermost = None
        task = None
        while frame is not None:
            if innermost is None:
                innermost = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            name = names.get(frame.f_code)
            if name is not None:
                task = name
                innermost = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
                break
            frame = frame.f_back
        job_id = self._job_of_current() if task is not None else None
        return LoopStall(round(stalled, 3), task, job_id, innermost or "?")
