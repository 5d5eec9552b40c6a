"""The process-level crash, signal and multi-process tests, run again with Redis as the store.

The tests are the memory/SQLite ones (``test_crash``, ``test_signals``, ``test_processes``),
imported as they are; only the ``db_url`` fixture changes: a key prefix of its own on the
session's throwaway ``redis-server``.
"""

from __future__ import annotations

import uuid

import pytest
from redis_server import RedisServer

from .test_crash import test_sigkill_mid_run_loses_nothing_and_reruns_only_in_flight_jobs
from .test_processes import (
    test_supervisor_replaces_a_killed_worker_process_and_loses_nothing,
    test_two_processes_run_each_job_once_and_keep_lanes_in_order,
)
from .test_signals import (
    test_blocking_def_job_outlasting_grace_does_not_keep_the_worker_alive,
    test_cpu_job_outlasting_grace_is_released_and_its_process_killed,
    test_job_outlasting_grace_goes_back_queued_without_an_attempt,
    test_second_signal_exits_at_once_and_leases_bring_jobs_back,
    test_sigterm_lets_running_jobs_finish_and_exits_zero,
)

pytestmark = pytest.mark.timeout(90)

__all__ = [
    "test_blocking_def_job_outlasting_grace_does_not_keep_the_worker_alive",
    "test_cpu_job_outlasting_grace_is_released_and_its_process_killed",
    "test_job_outlasting_grace_goes_back_queued_without_an_attempt",
    "test_second_signal_exits_at_once_and_leases_bring_jobs_back",
    "test_sigkill_mid_run_loses_nothing_and_reruns_only_in_flight_jobs",
    "test_sigterm_lets_running_jobs_finish_and_exits_zero",
    "test_supervisor_replaces_a_killed_worker_process_and_loses_nothing",
    "test_two_processes_run_each_job_once_and_keep_lanes_in_order",
]


@pytest.fixture
def db_url(redis_server: RedisServer) -> str:
    """This test's store: its own key prefix on the session's redis-server."""
    return redis_server.url(prefix=f"itest-{uuid.uuid4().hex[:12]}")
