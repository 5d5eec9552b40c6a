"""Time as the Redis backend judges it: the Redis clock, as this process can tell it.

Leases and due times are judged by the Redis server's clock alone (one clock every worker
agrees on). This process needs it twice: to tell how old a hand-out is (estimated from the last
claim's reading of ``TIME`` plus the time elapsed since, never from the wall clock, which may
step), and to send due times (``delay=``, ``at=``, retry backoff) as times of the Redis clock
(by an offset measured on a quiet round trip of its own).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from conveyor.model import utcnow

__all__ = ["RedisClock", "elapsed", "shifted"]

# seconds a measurement of the wall clock's offset from Redis' is used before it is taken again
_SKEW_REFRESH = 30.0
# a measured offset at most this big (or within the reading's round trip) is taken as none
_SKEW_IGNORED = 0.05


def shifted(at: datetime | None, skew: float) -> str:
    """A due time of this process's clock, as a timestamp of the Redis clock ('' for none)."""
    return "" if at is None else repr(at.timestamp() - skew)


def _wall() -> float:
    """This process's wall clock (the one due times are given by), as a POSIX timestamp."""
    return utcnow().timestamp()


def elapsed() -> float:
    """Seconds on a clock that never steps and, where the system has one, counts suspends too."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


class RedisClock:
    """The Redis clock as this process estimates it, and its offset from our wall clock."""

    def __init__(self, command: Callable[..., Awaitable[Any]]) -> None:
        self._command = command
        # the Redis clock read by the last claim, and elapsed() when that claim was sent
        self._read = (0.0, 0.0)
        # when our wall clock's offset from Redis' was measured (elapsed()), and the offset
        self._skew = (-_SKEW_REFRESH, 0.0)

    def anchor(self, server_now: float, sent: float) -> None:
        """A claim sent at ``sent`` (``elapsed()``) read ``server_now`` on the Redis clock.

        Anchored when it was sent, so the estimate errs late (hand-outs look older, and are
        checked once more), never early: a process stopped before it read the reply must not
        take that pause for fresh time.
        """
        self._read = (server_now, sent)

    def now(self) -> float:
        """The Redis clock now, as estimated from the last reading."""
        read, at = self._read
        return read + (elapsed() - at)

    async def skew(self) -> float:
        """How far this process's wall clock is ahead of Redis', in seconds (measured anew when
        the last reading is older than ``_SKEW_REFRESH``): due times are sent on the Redis clock.

        Read with ``TIME`` on a round trip of its own, timed: the reading is trusted within half
        that round trip, so time spent queued behind another client's long script never reads as
        skew (it would if the clock were read inside the script that stores the due time).
        """
        measured, skew = self._skew
        if elapsed() - measured < _SKEW_REFRESH:
            return skew
        best: tuple[float, float] | None = None
        for _ in range(3):
            before = _wall()
            sec, usec = await self._command("TIME")
            after = _wall()
            sample = (after - before, (before + after) / 2 - (int(sec) + int(usec) / 1e6))
            if best is None or sample[0] < best[0]:
                best = sample
            if sample[0] < 0.005:  # a quiet round trip: good enough
                break
        assert best is not None
        # clocks within _SKEW_IGNORED of each other count as one (NTP keeps hosts far closer), so
        # on a synced host `at=` is stored exactly as given, not moved by the reading's jitter
        skew = best[1] if abs(best[1]) > max(_SKEW_IGNORED, best[0]) else 0.0
        self._skew = (elapsed(), skew)
        return skew
