"""cpu=True jobs and signals: a stop signal to the whole process group drains or puts back the job
(never fails it); a child outlives neither its worker nor its pool; cpu tasks register clearly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conveyor import Queue
from conveyor.errors import ConfigError

from .apps import plain_cpu
from .procs import Workers, process_gone, until

pytestmark = pytest.mark.timeout(90)


def _pid(pidfile: Path) -> int:
    """The process id the cpu job wrote, or 0 while the file is missing or not yet written."""
    try:
        return int(pidfile.read_text() or 0)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_stop_signal_to_the_process_group_lets_the_cpu_job_finish(
    app_queue: Queue, workers: Workers, tmp_path: Path, signum: int
) -> None:
    """SIGTERM/SIGINT to the worker's whole group (systemd, Ctrl-C): the running cpu job finishes."""
    pidfile = tmp_path / "burn.pid"
    job = await app_queue.tasks["burn"].enqueue(2.0, str(pidfile))
    proc = workers.start("--concurrency", "1", "--grace", "20")
    await until(lambda: _pid(pidfile), 30, "the cpu job started in its process")
    os.killpg(proc.pid, signum)
    assert await proc.wait_exit(30) == 0, proc.output()[-3000:]
    info = await job.info()
    assert info.status == "succeeded", (info.status, info.error)
    assert info.result == _pid(pidfile)


async def test_stop_signal_to_the_group_past_grace_puts_the_cpu_job_back(
    app_queue: Queue, workers: Workers, tmp_path: Path
) -> None:
    """A cpu job outlasting grace after a group-wide SIGTERM goes back queued, its process killed."""
    pidfile = tmp_path / "burn.pid"
    job = await app_queue.tasks["burn"].enqueue(60.0, str(pidfile))
    proc = workers.start("--concurrency", "1", "--grace", "1")
    await until(lambda: _pid(pidfile), 30, "the cpu job started in its process")
    child = _pid(pidfile)
    os.killpg(proc.pid, signal.SIGTERM)
    assert await proc.wait_exit(30) == 0, proc.output()[-3000:]
    await until(lambda: process_gone(child), 10, f"cpu process {child} killed")
    info = await job.info()
    assert (info.status, info.attempts) == ("queued", 0), (info.status, info.error)


async def test_cpu_child_exits_when_its_worker_dies(
    app_queue: Queue, workers: Workers, tmp_path: Path
) -> None:
    """SIGKILL to the worker alone: its cpu child notices and exits instead of burning on."""
    pidfile = tmp_path / "burn.pid"
    await app_queue.tasks["burn"].enqueue(60.0, str(pidfile))
    proc = workers.start("--concurrency", "1")
    await until(lambda: _pid(pidfile), 30, "the cpu job started in its process")
    child = _pid(pidfile)
    proc.signal(signal.SIGKILL)
    await proc.wait_exit(10)
    await until(lambda: process_gone(child), 10, f"orphaned cpu process {child} exits")


def test_nested_cpu_function_is_refused_at_registration() -> None:
    """cpu=True on a function defined inside another one is a ConfigError that says why."""
    queue = Queue("memory://")

    def local(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match="module level"):
        queue.task(cpu=True)(local)
    with pytest.raises(ConfigError, match="module level"):
        queue.task(cpu=True, name="lam")(lambda x: x)


async def test_plain_module_function_registered_as_cpu_task_runs(db_url: str) -> None:
    """``queue.task(cpu=True)(fn)`` on an undecorated module-level function runs in a child."""
    queue = Queue(db_url)
    square = queue.task(cpu=True)(plain_cpu.square)
    async with queue, queue.worker(concurrency=1):
        job = await square.enqueue(7)
        value, pid = await job.result(timeout=30)
    assert value == 49
    assert pid != os.getpid()
    assert (await job.info()).progress == {"fraction": 0.5, "message": "squaring"}
