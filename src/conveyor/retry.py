"""Retry policy: how many attempts a job gets and how long to wait between them. Pure."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from conveyor.errors import OptionError

__all__ = ["MAX_ATTEMPTS", "MAX_SECONDS", "Retry", "number", "seconds"]

#: the longest duration conveyor takes (a delay, a timeout, a backoff): 100 years, in seconds
MAX_SECONDS = 100 * 365 * 24 * 3600.0
#: the most attempts a retry policy may allow
MAX_ATTEMPTS = 1_000_000


def number(value: object, what: str, *, low: float, high: float) -> float:
    """A finite real number (not a bool) in ``[low, high]``, or :class:`OptionError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    if not low <= value <= high:  # also false for NaN
        raise OptionError(f"{what} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def seconds(
    value: float | timedelta | None, what: str = "duration", *, positive: bool = False
) -> float | None:
    """A duration in seconds from a number or a timedelta, at most :data:`MAX_SECONDS`.

    Negative, NaN, infinite, and (with ``positive``) zero durations, and values that are not
    numbers (a str, a bool), raise :class:`OptionError`.
    """
    if value is None:
        return None
    out = value.total_seconds() if isinstance(value, timedelta) else value
    out = number(out, f"{what} (seconds)", low=0.0, high=MAX_SECONDS)
    if positive and out == 0:
        raise OptionError(f"{what} must be more than 0 seconds")
    return out


@dataclass(frozen=True, slots=True)
class Retry:
    """Up to ``attempts`` attempts in all; exponential backoff between them, in seconds.

    The wait before attempt ``n + 1`` is ``backoff * factor ** (n - 1)``, at most ``max_delay``;
    with ``jitter`` it is drawn uniformly between half of that and all of it, so that jobs that
    failed together do not retry together.
    """

    attempts: int = 1
    backoff: float = 1.0
    jitter: bool = True
    factor: float = 2.0
    max_delay: float = 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or not (
            1 <= self.attempts <= MAX_ATTEMPTS
        ):
            raise OptionError(
                "Retry(attempts=) counts every attempt: it must be an int from 1 to "
                f"{MAX_ATTEMPTS:,}, got {self.attempts!r}"
            )
        if not isinstance(self.jitter, bool):
            raise OptionError(f"Retry(jitter=) must be a bool, got {self.jitter!r}")
        # frozen: store the checked floats through object.__setattr__
        object.__setattr__(self, "backoff", seconds(self.backoff, "Retry(backoff=)"))
        object.__setattr__(self, "max_delay", seconds(self.max_delay, "Retry(max_delay=)"))
        object.__setattr__(self, "factor", number(self.factor, "Retry(factor=)", low=1.0, high=1000.0))

    @classmethod
    def of(cls, value: Retry | int | None) -> Retry | None:
        """A policy from ``retries=``: a Retry, or an int counting retries after the first attempt."""
        if value is None or isinstance(value, Retry):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_ATTEMPTS:
            raise OptionError(
                f"retries= takes a Retry or a number of retries from 0 to {MAX_ATTEMPTS - 1:,}, "
                f"got {value!r}"
            )
        return cls(attempts=value + 1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(0, attempt - 1)
        # factor ** exponent overflows a float long before the attempts run out: past max_delay
        # anyway, so compare in logarithms first
        if self.backoff == 0 or self.factor == 1:
            base = min(self.max_delay, self.backoff)
        elif math.log(self.backoff) + exponent * math.log(self.factor) >= math.log(self.max_delay or 1e-300):
            base = self.max_delay
        else:
            base = min(self.max_delay, self.backoff * self.factor**exponent)
        if not self.jitter or base == 0:
            return base
        return (rng or random).uniform(base / 2, base)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored on the job."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Retry:
        """Inverse of ``to_dict``."""
        return cls(**data)
