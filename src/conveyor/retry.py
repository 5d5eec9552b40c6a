"""Retry policy: how many attempts a job gets and how long to wait between them. Pure."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from conveyor.errors import ConfigError

__all__ = ["Retry", "seconds"]


def seconds(value: float | timedelta | None, what: str = "duration") -> float | None:
    """A duration in seconds from a number or a timedelta; rejects negative values."""
    if value is None:
        return None
    out = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if out < 0 or out != out:
        raise ConfigError(f"{what} must be a non-negative number of seconds, got {value!r}")
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
        if self.attempts < 1:
            raise ConfigError("Retry(attempts=) counts every attempt: it must be at least 1")
        if self.backoff < 0 or self.factor < 1 or self.max_delay < 0:
            raise ConfigError("Retry needs backoff >= 0, factor >= 1 and max_delay >= 0")

    @classmethod
    def of(cls, value: Retry | int | None) -> Retry | None:
        """A policy from ``retries=``: a Retry, or an int counting retries after the first attempt."""
        if value is None or isinstance(value, Retry):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"retries= takes a Retry or a number of retries >= 0, got {value!r}")
        return cls(attempts=value + 1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.backoff * self.factor ** max(0, attempt - 1))
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
