"""A CLI worker fed malformed stored jobs fails them with a clear error and keeps going."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from conveyor import JobRecord, Queue
from conveyor.model import new_id

from .procs import Workers, count, until

pytestmark = pytest.mark.timeout(60)


def bad(task: str, args: object, kwargs: object | None = None) -> JobRecord:
    """A record written straight to the store, skipping enqueue's validation."""
    return JobRecord(id=new_id(), task=task, args=args, kwargs=kwargs or {})  # type: ignore[arg-type]


async def test_malformed_jobs_fail_clearly_and_the_worker_keeps_going(
    app_queue: Queue, workers: Workers, task_log: Path
) -> None:
    """Unknown task names and ill-fitting arguments end failed with a clear error; later jobs run."""
    malformed = {
        "unknown task": (bad("no_such_task", [1]), "UnknownTask", "no_such_task"),
        "wrong type": (bad("work", ["not a number", 0.01]), "ArgumentError", "n"),
        "missing argument": (bad("work", [1]), "ArgumentError", "seconds"),
        "unexpected keyword": (bad("work", [1, 0.01], {"bogus": 1}), "ArgumentError", "bogus"),
        "args not a list": (bad("work", {"n": 1}), "ArgumentError", "malformed"),
    }
    await app_queue.backend.enqueue([record for record, _, _ in malformed.values()])
    tick = app_queue.tasks["tick"]
    good = await app_queue.enqueue_many([tick.prepare(n) for n in range(10)])

    proc = workers.start("--concurrency", "4")

    async def good_done() -> bool:
        return all([(await job.status()) == "succeeded" for job in good])

    await until(good_done, 20, "the good jobs after the bad ones succeeded")
    for what, (record, kind, mention) in malformed.items():
        info = await app_queue.job(record.id).info()
        assert info.status == "failed", f"{what}: {info}"
        assert info.error is not None, what
        assert info.error["type"].endswith(kind), f"{what}: {info.error}"
        assert mention in info.error["message"], f"{what}: {info.error['message']}"
    assert len(count(task_log, "run")) == 10
    assert proc.alive, "the worker survived"

    later = await tick.enqueue(99)
    assert await later.result(timeout=10) == 99, "and it keeps taking new jobs"
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(10) == 0


async def test_undecodable_stored_payload_fails_that_job_only(
    app_queue: Queue, workers: Workers, task_log: Path, db_url: str
) -> None:
    """A stored row whose args are not JSON at all fails that job; the worker runs the rest."""
    tick = app_queue.tasks["tick"]
    poisoned = await tick.enqueue(0)
    good = await app_queue.enqueue_many([tick.prepare(n) for n in range(1, 6)])
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE conveyor_jobs SET args = '[1, oops' WHERE id = ?", (poisoned.id,))
    conn.close()

    proc = workers.start("--concurrency", "4")

    async def good_done() -> bool:
        return all([(await job.status()) == "succeeded" for job in good])

    await until(good_done, 10, "the jobs behind the poisoned row succeeded")
    assert proc.alive, proc.output()[-2000:]
    info = await app_queue.job(poisoned.id).info()
    assert info.status == "failed", info
    assert info.error is not None and info.error["message"], "the failure says what is wrong"
    assert "malformed" in info.error["message"] or "decode" in info.error["message"], info.error
    assert len(count(task_log, "run")) == 5, "the poisoned job never ran"
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(10) == 0
