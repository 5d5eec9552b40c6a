"""``--processes 2``: two worker processes on one SQLite file share the work without duplicates."""

from __future__ import annotations

import os
import re
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from conveyor import Queue

from .procs import Workers, all_jobs, count, process_gone, read_log, statuses, until

pytestmark = pytest.mark.timeout(60)

PLAIN = 300
LANES = 2  # few lanes, so both processes compete for them and lanes cross between them
STEPS = 100  # per lane: 300 + 2 * 100 = 500 jobs


async def test_two_processes_run_each_job_once_and_keep_lanes_in_order(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """500 jobs over two processes each run exactly once; each key's jobs run one at a time, in order."""
    # nothing is killed here: a long lease keeps a busy machine from expiring one (at-least-once)
    proc = workers.start("--processes", "2", "--concurrency", "10", env={"ITEST_LEASE": "30"})
    await until(lambda: proc.output().count(" started on ") == 2, 20, "both worker processes up")
    tick, step = app_queue.tasks["tick"], app_queue.tasks["step"]
    ids: set[str] = set()
    # enqueue while the workers run, lanes interleaved, so both processes see every lane
    per_batch = PLAIN // (STEPS // 5)
    for batch in range(STEPS // 5):
        prepared = [tick.prepare(batch * per_batch + i) for i in range(per_batch)]
        prepared += [step.prepare(lane, batch * 5 + s) for s in range(5) for lane in range(LANES)]
        ids |= {job.id for job in await app_queue.enqueue_many(prepared)}
    total = PLAIN + LANES * STEPS
    assert len(ids) == total

    async def all_succeeded() -> bool:
        return (await statuses(app_queue)).get("succeeded", 0) == total

    await until(all_succeeded, 40, f"all {total} jobs succeeded")
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(15) == 0
    assert await statuses(app_queue) == {"succeeded": total}

    log = read_log(task_log)
    runs = [e.job_id for e in log if e.event in ("run", "start")]
    assert len(runs) == total and set(runs) == ids, "every job ran exactly once"
    pids = {e.pid for e in log}
    assert len(pids) == 2, f"both worker processes took jobs: {pids}"

    lanes: dict[str, list[tuple[str, int]]] = defaultdict(list)
    lane_pids: dict[str, set[int]] = defaultdict(set)
    for e in log:
        if e.event in ("start", "end"):
            lane, seq = e.fields
            lanes[lane].append((e.event, int(seq)))
            lane_pids[lane].add(e.pid)
    assert len(lanes) == LANES
    for lane, events in lanes.items():
        expected = [(event, seq) for seq in range(STEPS) for event in ("start", "end")]
        assert events == expected, f"lane {lane} ran out of order or overlapped: {events[:20]}"
    assert any(len(p) == 2 for p in lane_pids.values()), "a lane crossed processes"


async def test_supervisor_replaces_a_killed_worker_process_and_loses_nothing(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """SIGKILL one of two worker processes: the supervisor starts another and every job succeeds."""
    work = app_queue.tasks["work"]
    jobs = await app_queue.enqueue_many([work.prepare(n, 0.3) for n in range(60)])
    proc = workers.start("--processes", "2", "--concurrency", "5")

    def working_pids() -> list[int]:
        return list(dict.fromkeys(e.pid for e in read_log(task_log) if e.event == "start"))

    await until(lambda: len(working_pids()) == 2, 20, "both worker processes run jobs")
    victim = working_pids()[0]
    os.kill(victim, signal.SIGKILL)
    await until(lambda: process_gone(victim), 5, "the worker process died")
    running_at_kill = {
        r.id
        for r in await all_jobs(app_queue)
        if r.status == "running" and r.worker and f":{victim}:" in r.worker
    }
    await proc.wait_output(f"worker process {victim} exited with -9; starting another")

    async def all_succeeded() -> bool:
        return (await statuses(app_queue)).get("succeeded", 0) == len(jobs)

    await until(all_succeeded, 30, "every job succeeded")
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(15) == 0
    starts = count(task_log, "start")
    assert set(count(task_log, "end")) == {job.id for job in jobs}
    twice = {job_id for job_id, n in starts.items() if n > 1}
    assert twice <= running_at_kill, "only jobs in flight on the killed process ran twice"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signal_to_the_whole_group_drains_every_process(
    app_queue: Queue, workers: Workers, task_log: Path, signum: int
) -> None:
    """``--processes 2`` and one SIGTERM/SIGINT to the whole group: running jobs finish, exit 0.

    The signal reaches each worker twice (directly, and forwarded by the supervisor); that must
    not read as the "second signal" that exits at once and abandons the running jobs.
    """
    proc = workers.start("--processes", "2", "--concurrency", "2", "--grace", "20",
                         env={"ITEST_LEASE": "30"})
    await until(lambda: proc.output().count(" started on ") == 2, 20, "both worker processes up")
    work = app_queue.tasks["work"]
    jobs = await app_queue.enqueue_many([work.prepare(i, 2.0) for i in range(4)])
    await until(lambda: count(task_log, "start").total() == 4, 20, "all four jobs running")
    os.killpg(proc.pid, signum)
    assert await proc.wait_exit(30) == 0, proc.output()[-3000:]
    assert "exiting now" not in proc.output()
    for job in jobs:
        assert (await job.status()) == "succeeded"


async def test_a_stop_while_a_crashed_worker_is_replaced_ends_the_supervisor(
    app_queue: Queue, workers: Workers
) -> None:
    """SIGTERM to the supervisor just as it replaces a crashed worker: it starts none and exits."""
    proc = workers.start("--processes", "2", "--concurrency", "2")
    await until(lambda: proc.output().count(" started on ") == 2, 20, "both worker processes up")
    # each worker logs "worker <host>:<pid>:<token> started on ..."
    children = [int(m) for m in re.findall(r"worker [^\s:]+:(\d+):\w+ started on ", proc.output())]
    os.kill(children[0], signal.SIGKILL)
    await until(lambda: "starting another" in proc.output(), 10, "the supervisor saw the crash")
    proc.signal(signal.SIGTERM)  # to the supervisor alone, during its pause before the restart
    assert await proc.wait_exit(20) == 0, proc.output()[-3000:]
    await until(lambda: process_gone(children[1]), 10, "the other worker stopped too")
    assert proc.output().count(" started on ") == 2, "no replacement was started after the stop"
