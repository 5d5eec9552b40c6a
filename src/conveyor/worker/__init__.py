"""Runs jobs: the claim loop, executors (loop, threads, processes), leases and shutdown."""

from conveyor.worker.engine import Worker
from conveyor.worker.watchdog import LoopStall

__all__ = ["LoopStall", "Worker"]
