"""Typed settings, and the one place conveyor reads the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from conveyor.errors import OptionError
from conveyor.retry import MAX_SECONDS, number

__all__ = ["DEFAULT_URL", "Settings", "url_from_env"]

DEFAULT_URL = "sqlite:///./conveyor.db"


def url_from_env() -> str:
    """``$CONVEYOR_URL``, else the embedded SQLite default."""
    return os.environ.get("CONVEYOR_URL") or DEFAULT_URL


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How a queue and its workers behave. Durations in seconds.

    Unknown keys are a ``TypeError`` at construction, so a typo never goes unnoticed; a value
    of the wrong type or out of range is an :class:`~conveyor.errors.OptionError`.
    """

    #: how long a claimed job stays with its worker without a heartbeat before it is put back
    lease: float = 30.0
    #: on shutdown, how long running jobs may take to finish before they are released
    grace: float = 30.0
    #: largest encoded arguments payload accepted by enqueue, in bytes
    max_payload: int = 1 << 20
    #: how often a worker looks for expired leases of crashed workers
    recover_interval: float = 5.0
    #: how often a worker asks whether its running jobs were cancelled
    cancel_poll: float = 0.2
    #: an event loop stalled longer than this is reported, with the task that blocked it
    loop_lag_warning: float = 0.25
    #: a job whose lease expires this many times (its worker crashed or hung each time) is dead
    max_lost_leases: int | None = 5
    #: finished jobs older than this are deleted by workers (None keeps them forever)
    retention: float | None = 7 * 24 * 3600.0
    #: how often a worker deletes finished jobs past their retention
    purge_interval: float = 60.0

    def __post_init__(self) -> None:
        for name in ("lease", "grace", "recover_interval", "cancel_poll", "loop_lag_warning",
                     "purge_interval"):
            value = number(getattr(self, name), f"Settings.{name}", low=0.0, high=MAX_SECONDS)
            if value <= 0:
                raise OptionError(f"Settings.{name} must be a positive number of seconds")
        if self.lease < 1.0:
            raise OptionError("Settings.lease must be at least 1 second")
        if self.retention is not None:
            number(self.retention, "Settings.retention", low=0.0, high=MAX_SECONDS)
            if self.retention <= 0:
                raise OptionError("Settings.retention must be positive seconds, or None to keep jobs")
        for name, low, high in (("max_payload", 1, 1 << 30), ("max_lost_leases", 1, 1_000_000)):
            value = getattr(self, name)
            if value is None and name == "max_lost_leases":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise OptionError(f"Settings.{name} must be an int from {low} to {high:,}, got {value!r}")
