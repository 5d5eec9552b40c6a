"""The chaos run's two journals, kept apart from the store so the checker can judge the store.

*Task journal* (``$CHAOS_JOURNAL``): every execution of a chaos task appends one line when it starts
and one when it ends, each with a single ``write`` on a descriptor opened with ``O_APPEND`` (lines are
far shorter than ``PIPE_BUF``, so lines from many processes never mix, and a line is either whole or
absent after a SIGKILL)::

    S <job> <attempt> <pid> <ppid> <monotonic> <wall> <lane|-> <kind>
    E <job> <attempt> <pid> <ppid> <monotonic> <wall> <lane|-> <outcome> <value|->

*Driver log*: one JSON object per line for everything the driver did (enqueues and their answers,
cancels and retries by hand with their answers, signals, restarts), stamped with the same
``time.monotonic()`` clock (CLOCK_MONOTONIC is one clock for every process on the machine).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["End", "Start", "append_line", "read_driver_log", "read_journal"]


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` (plus a newline) to ``path`` in one ``write`` on an ``O_APPEND`` descriptor."""
    data = (line + "\n").encode()
    assert len(data) < 512, "a journal line must stay far below PIPE_BUF to be written at once"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def stamp() -> tuple[str, str]:
    """The monotonic and wall-clock times, as journal fields."""
    return f"{time.monotonic():.6f}", f"{time.time():.6f}"


@dataclass(frozen=True, slots=True)
class Start:
    """An execution began: the task's first line."""

    job: str
    attempt: int
    pid: int
    ppid: int
    mono: float
    wall: float
    lane: str | None
    kind: str


@dataclass(frozen=True, slots=True)
class End:
    """An execution ended in its own code (``ok``, ``fail``, ``cancelled`` or ``error:<type>``)."""

    job: str
    attempt: int
    pid: int
    ppid: int
    mono: float
    wall: float
    lane: str | None
    outcome: str
    value: str | None


def read_journal(path: Path) -> tuple[list[Start], list[End]]:
    """Every whole line of the task journal, starts and ends, in the order they were appended."""
    starts: list[Start] = []
    ends: list[End] = []
    if not path.exists():
        return starts, ends
    for line in path.read_text().splitlines():
        parts = line.split(" ")
        tag, job, attempt, pid, ppid, mono, wall, lane = parts[:8]
        common = (job, int(attempt), int(pid), int(ppid), float(mono), float(wall),
                  None if lane == "-" else lane)
        if tag == "S":
            starts.append(Start(*common, kind=parts[8]))
        elif tag == "E":
            value = parts[9] if len(parts) > 9 and parts[9] != "-" else None
            ends.append(End(*common, outcome=parts[8], value=value))
    return starts, ends


def read_driver_log(path: Path) -> list[dict[str, Any]]:
    """Every event the driver recorded, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
