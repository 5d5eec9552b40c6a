"""The chaos run's worker processes: start them, find every process of one, signal them all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["REPO", "WorkerSession", "session_pids"]

#: the repository root: workers import ``tests.chaos.app`` from here
REPO = Path(__file__).resolve().parents[2]
APP = "tests.chaos.app:queue"


def _stat(pid: str) -> tuple[str, int, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[3])  # state, ppid, session


def session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid`` (a worker, its supervised workers, their cpu children).

    By session rather than process group: a child that moves to a group of its own stays found.
    """
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(entry)
        if stat is not None and stat[2] == sid and stat[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def children_of(pid: int, pids: list[int]) -> list[int]:
    """``pid`` and its descendants among ``pids``."""
    parents = {p: s[1] for p in pids if (s := _stat(str(p))) is not None}
    found = [pid]
    for p in pids:
        q = parents.get(p)
        while q is not None and q not in (pid, 1):
            q = parents.get(q)
        if q == pid and p != pid:
            found.append(p)
    return found


class WorkerSession:
    """One ``python -m conveyor worker`` command, in a session of its own."""

    def __init__(self, popen: subprocess.Popen[bytes], processes: int, clean: bool) -> None:
        self.popen = popen
        self.processes = processes
        self.clean = clean
        self.stopped_until: float | None = None
        self.terminating = False

    @classmethod
    def start(
        cls, url: str, journal: Path, output: Path, *, concurrency: int, processes: int,
        clean: bool = False,
    ) -> WorkerSession:
        """Start ``conveyor worker tests.chaos.app:queue`` on ``url``; output appended to a file."""
        env = dict(os.environ)
        env.update(
            CONVEYOR_URL=url, CHAOS_JOURNAL=str(journal), PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        )
        with output.open("ab") as sink:
            popen = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", APP, "--concurrency", str(concurrency),
                 "--processes", str(processes), "--log-level", "warning"],
                cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return cls(popen, processes, clean)

    @property
    def pid(self) -> int:
        """The leader's pid, which is also the session id."""
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """True while the leader runs."""
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """Every live process of this worker."""
        return session_pids(self.pid)

    def signal_all(self, signum: int, pids: list[int] | None = None) -> list[int]:
        """Send ``signum`` to ``pids`` (default: every process of the session); return them."""
        targets = self.pids() if pids is None else pids
        if pids is None:
            # the group first, in one call, so its processes get the signal together
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return targets

    def kill(self) -> list[int]:
        """SIGKILL every process of the session at once; reap the leader; return the pids."""
        pids = self.signal_all(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        return pids
