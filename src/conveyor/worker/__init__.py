"""Runs jobs: the claim loop, executors (loop, threads, processes), leases and shutdown."""

from conveyor.worker.child import in_cpu_process
from conveyor.worker.engine import Worker
from conveyor.worker.watchdog import LoopStall

__all__ = ["LoopStall", "Worker", "in_cpu_process"]
