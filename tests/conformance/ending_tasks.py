"""Every odd way a task body can end, as module-level code (a ``cpu=True`` child imports it).

``end(kind)`` raises (or returns) the ending named ``kind``; the ``cpu=True`` task below does it in
a child process. The same functions serve ``async def`` and ``def`` tasks in the tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import Context, Queue


class StrRaises(Exception):
    """An exception that cannot be turned into text at all."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class StrExits(Exception):
    """An exception whose ``__str__`` raises what is not an Exception (set by ``kind``)."""

    def __init__(self, raises: BaseException) -> None:
        super().__init__()
        self.raises = raises

    def __str__(self) -> str:
        raise self.raises


class NotesRaise(Exception):
    """An exception whose traceback cannot be formatted (reading its notes raises)."""

    @property
    def __notes__(self) -> Any:
        raise RuntimeError("__notes__ is broken")


# a class name no one would write: spaces, a newline, markup, non-ASCII, and a module that is no str
OddName: type[Exception] = type("Odd Name <b>\nß", (ValueError,), {"__module__": 42})

#: ending name -> a fragment the stored error type must contain
ENDINGS: dict[str, str] = {
    "cancelled_error": "CancelledError",
    "keyboard_interrupt": "KeyboardInterrupt",
    "system_exit": "SystemExit",
    "generator_exit": "GeneratorExit",
    "str_raises": "StrRaises",
    "str_raises_system_exit": "StrExits",
    "str_raises_keyboard_interrupt": "StrExits",
    "str_raises_cancelled_error": "StrExits",
    "str_raises_generator_exit": "StrExits",
    "notes_raise": "NotesRaise",
    "odd_class_name": "Odd Name",
    "surrogate_message": "ValueError",
    "huge_message": "ValueError",
}


def end(kind: str) -> Any:
    """Raise the ending named ``kind`` (see ``ENDINGS``); ``huge_int`` returns an unencodable int."""
    if kind == "cancelled_error":
        raise asyncio.CancelledError()
    if kind == "keyboard_interrupt":
        raise KeyboardInterrupt()
    if kind == "system_exit":
        raise SystemExit(3)
    if kind == "generator_exit":
        raise GeneratorExit()
    if kind == "str_raises":
        raise StrRaises("hidden")
    if kind == "str_raises_system_exit":
        raise StrExits(SystemExit(0))
    if kind == "str_raises_keyboard_interrupt":
        raise StrExits(KeyboardInterrupt())
    if kind == "str_raises_cancelled_error":
        raise StrExits(asyncio.CancelledError())
    if kind == "str_raises_generator_exit":
        raise StrExits(GeneratorExit())
    if kind == "notes_raise":
        raise NotesRaise("notes")
    if kind == "odd_class_name":
        raise OddName("odd")
    if kind == "surrogate_message":
        raise ValueError("lone surrogate \ud800 in the message")
    if kind == "huge_message":
        raise ValueError("x" * 5_000_000)
    if kind == "huge_int":
        return 10**5000  # passes the JSON shape check; json.dumps refuses it (digit limit)
    raise AssertionError(f"unknown ending {kind!r}")


# never opened: it only gives the child process something to look the task up on
queue = Queue("memory://", name="ending-tasks")


@queue.task(cpu=True)
def end_in_process(kind: str) -> Any:
    """``end(kind)`` in a child process."""
    return end(kind)


@queue.task(cpu=True)
def report_often(n: int, ctx: Context) -> int:
    """Report progress ``n`` times in a tight loop from a child process; return ``n``."""
    for i in range(1, n + 1):
        ctx.progress(i / n, f"{i}")
    return n
