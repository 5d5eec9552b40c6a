"""Helpers for process-level tests: start CLI workers, signal them, read what their tasks did."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waiting import wait_until  # tests/ is on sys.path

from conveyor import Queue
from conveyor.backends.base import JobFilter
from conveyor.model import JobRecord

#: the directory that holds the ``integration`` package, put on the workers' PYTHONPATH
TESTS_DIR = Path(__file__).resolve().parents[1]
#: what ``conveyor worker`` loads
APP = "integration.apps.cli_app:queue"


async def until(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float,
    message: str,
    *,
    interval: float = 0.02,
) -> Any:
    """Poll ``predicate`` (sync or async) until truthy and return it; fail after ``timeout`` s."""
    return await wait_until(predicate, timeout, interval=interval, message=message)


@dataclass(frozen=True, slots=True)
class Entry:
    """One line a task wrote: ``event job_id pid fields...``."""

    event: str
    job_id: str
    pid: int
    fields: tuple[str, ...]


def read_log(path: Path) -> list[Entry]:
    """Every complete line of a task log, in the order the lines were appended."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        event, job_id, pid, *fields = line.split()
        out.append(Entry(event, job_id, int(pid), tuple(fields)))
    return out


def count(path: Path, event: str) -> Counter[str]:
    """How many ``event`` lines each job id has."""
    return Counter(e.job_id for e in read_log(path) if e.event == event)


async def all_jobs(queue: Queue) -> list[JobRecord]:
    """Every job record in the store, newest first."""
    await queue.open()
    return await queue.backend.list_jobs(JobFilter(limit=100_000))


async def statuses(queue: Queue) -> dict[str, int]:
    """Job counts by status, only the statuses that have jobs."""
    await queue.open()
    return {k: v for k, v in (await queue.backend.stats()).items() if v}


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (it does not exist, or it is a zombie nobody reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class WorkerProcess:
    """A ``python -m conveyor worker`` process, in a session of its own, output to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], output: Path) -> None:
        self.popen = popen
        self.output_path = output

    @property
    def pid(self) -> int:
        """The process id (the supervisor's, with ``--processes``)."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker process itself."""
        self.popen.send_signal(signum)

    def output(self) -> str:
        """Everything it wrote to stdout and stderr so far."""
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    async def wait_output(self, text: str, timeout: float = 15.0) -> None:
        """Wait until ``text`` appears in its output."""
        await until(lambda: text in self.output() or not self.alive, timeout, f"output {text!r}")
        assert text in self.output(), f"exited ({self.popen.returncode}) before {text!r}:\n{self.output()}"

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end; return its exit code."""
        await until(lambda: not self.alive, timeout, f"worker {self.pid} exits\n{self.output()[-3000:]}")
        assert self.popen.returncode is not None
        return self.popen.returncode

    def destroy(self) -> None:
        """SIGKILL the whole session (worker, supervised children, cpu children) and reap."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


class Workers:
    """Starts CLI workers on one store for one test; destroys any left at the end."""

    def __init__(self, tmp_path: Path, url: str, task_log: Path) -> None:
        self.tmp_path = tmp_path
        self.url = url
        self.task_log = task_log
        self.started: list[WorkerProcess] = []

    def start(self, *args: str, env: dict[str, str] | None = None, app: str = APP) -> WorkerProcess:
        """``python -m conveyor worker integration.apps.cli_app:queue *args`` (or another ``app``)."""
        environ = dict(os.environ)
        environ.update(
            CONVEYOR_URL=self.url,
            ITEST_LOG=str(self.task_log),
            PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), environ.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
        )
        environ.update(env or {})
        output = self.tmp_path / f"worker-{len(self.started)}.out"
        with output.open("wb") as sink:
            popen = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", app, *args],
                cwd=self.tmp_path,
                env=environ,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = WorkerProcess(popen, output)
        self.started.append(proc)
        return proc

    def destroy_all(self) -> None:
        """Kill every worker this test started, and whatever is left of their sessions."""
        for proc in self.started:
            proc.destroy()
