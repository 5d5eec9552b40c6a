"""The chaos driver: CLI workers on one real store, a mix of jobs, and signals at random.

One :class:`ChaosRun` per backend. It starts a few ``conveyor worker`` processes (one of them
supervising two worker processes), enqueues a mix of jobs for ``profile.seconds``, and meanwhile, at
random but reproducibly from ``profile.seed``: SIGKILLs a whole worker (or one supervised process),
SIGSTOPs one and SIGCONTs it later (sometimes past its lease), sends SIGTERM, restarts what died,
cancels and retries jobs by hand, and (Redis, PostgreSQL) stops or kills the server and starts it
again on the same files (Redis: its append-only file; PostgreSQL: a cluster of the run's own, made
by initdb on a free port, never the machine's shared server). Everything it does is written to
the driver log; the tasks write their own journal. Then it drains (clean workers until every job
is final) and hands both logs and the final store to the checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conveyor import Retry
from conveyor.backends import open_backend
from conveyor.backends.base import Backend, JobFilter
from conveyor.model import JobRecord

from . import app
from .procs import REPO, WorkerSession

__all__ = ["ChaosRun", "Profile"]

TASKS = {"chaos_async": app.chaos_async, "chaos_def": app.chaos_def, "chaos_cpu": app.chaos_cpu}
LANES = [f"L{i}" for i in range(6)]
TICK = 0.05
#: seconds one store call from the driver may take (a stopped Redis must not stall the driver)
CALL_TIMEOUT = 5.0


def _test_helper(module: str, name: str) -> Any:
    """A class of tests/<module>.py (the throwaway servers)."""
    tests_dir = str(REPO / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    return getattr(importlib.import_module(module), name)


class _Cluster:
    """A PostgreSQL cluster of the run's own, with the restart verbs the driver uses."""

    def __init__(self, directory: Path) -> None:
        self.cluster = _test_helper("pg_cluster", "PostgresCluster")(directory)

    def start(self) -> None:
        self.cluster.start()

    def url(self) -> str:
        return str(self.cluster.url(schema="chaos"))

    def kill(self, _signum: int) -> None:
        self.cluster.crash()  # every server process at once, no checkpoint: recovery at start

    def stop(self) -> None:
        self.cluster.stop()

    def destroy(self) -> None:
        self.cluster.destroy()


@dataclass(frozen=True, slots=True)
class Profile:
    """How long, how hard, and with which ingredients one chaos run goes. Rates are per second."""

    seconds: float = 30.0
    seed: int = 1
    workers: int = 3  # CLI workers; the first supervises two worker processes
    concurrency: int = 6
    enqueue_rate: float = 15.0
    kill_rate: float = 0.25
    stop_rate: float = 0.25
    term_rate: float = 0.15
    cancel_rate: float = 1.5
    retry_rate: float = 1.0
    #: Redis and PostgreSQL: how often the server is stopped (or killed) and started again
    server_restart_rate: float = 0.07
    #: `def` attempts that sleep past their timeout, and cancels of `def` jobs, which keep running
    #: their thread (they ignore ctx) while the worker frees their lane (issue 7, defect 4)
    def_hang: bool = True
    #: SIGTERM to a worker's whole process group, cpu children included (issue 7, defect 11)
    term_group: bool = True
    #: the timeout of a cpu job's hanging attempt; a fresh child process (the last one was killed
    #: at the previous timeout) takes about a second to start on a loaded machine, and that time
    #: counts against the timeout (finding of the first chaos runs)
    cpu_timeout: float = 0.8
    drain_timeout: float = 120.0


class ChaosRun:
    """One backend's chaos run in ``directory``: ``await run()`` leaves logs and the store there."""

    def __init__(self, backend: str, profile: Profile, directory: Path) -> None:
        if backend not in ("sqlite", "redis", "postgresql"):
            raise ValueError(f"unknown backend {backend!r}")
        self.name = backend
        self.profile = profile
        self.dir = directory
        self.rng = random.Random(f"{profile.seed}:{backend}")
        self.journal = directory / "journal.log"
        self.driver_log = directory / "driver.log"
        self.store_dump = directory / "store.json"
        self.server: Any = None  # Redis or PostgreSQL: a server of the run's own
        self.server_down_until: float | None = None
        self.url = ""
        self.store: Backend | None = None
        self.sessions: list[WorkerSession | None] = []
        self.restart_at: dict[int, float] = {}
        self.accepted: list[str] = []
        self.kinds: dict[str, str] = {}
        self.n = 0
        self._log = None

    # -- the record --------------------------------------------------------------------------
    def log(self, ev: str, **fields: Any) -> None:
        """Append one driver event, stamped with the monotonic clock."""
        line = json.dumps({"ev": ev, "t": time.monotonic(), **fields})
        with self.driver_log.open("a") as out:
            out.write(line + "\n")

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> list[JobRecord]:
        """Chaos for ``profile.seconds``, then drain; return the final store."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log("profile", backend=self.name, **asdict(self.profile))
        if self.name == "redis":
            self.server = _test_helper("redis_server", "RedisServer")(self.dir / "redis", aof=True)
            self.server.start()
            self.url = self.server.url()
        elif self.name == "postgresql":
            self.server = _Cluster(self.dir / "postgres")
            self.server.start()
            self.url = self.server.url()
        else:
            self.url = f"sqlite:///{self.dir / 'chaos.db'}"
        self.store = open_backend(self.url)
        await self.store.open()
        try:
            for slot in range(self.profile.workers):
                self._start_worker(slot)
            await self._chaos()
            await self._drain()
            records = await self._call(self.store.list_jobs(JobFilter(limit=10_000_000)))
            self.store_dump.write_text(json.dumps([r.to_dict() for r in records]))
            return list(records)
        finally:
            for session in self.sessions:
                if session is not None and session.alive:
                    session.kill()
            with contextlib.suppress(Exception):
                await self.store.close()
            if isinstance(self.server, _Cluster):
                self.server.destroy()
            elif self.server is not None:
                self.server.stop()

    def _start_worker(self, slot: int, *, clean: bool = False) -> WorkerSession:
        processes = 2 if slot == 0 and not clean else 1
        session = WorkerSession.start(
            self.url, self.journal, self.dir / f"worker-{slot}.out",
            concurrency=self.profile.concurrency, processes=processes, clean=clean,
        )
        while len(self.sessions) <= slot:
            self.sessions.append(None)
        self.sessions[slot] = session
        self.log("worker_start", slot=slot, pid=session.pid, processes=processes, clean=clean)
        return session

    async def _call(self, aw: Any) -> Any:
        return await asyncio.wait_for(aw, CALL_TIMEOUT)

    # -- the chaos ---------------------------------------------------------------------------
    async def _chaos(self) -> None:
        p = self.profile
        end = time.monotonic() + p.seconds
        budget = 0.0
        while time.monotonic() < end:
            budget += p.enqueue_rate * TICK
            while budget >= 1.0:
                budget -= 1.0
                await self._enqueue_one()
            self._maybe(p.kill_rate, self._kill)
            self._maybe(p.stop_rate, self._stop)
            self._maybe(p.term_rate, self._term)
            if self.rng.random() < p.cancel_rate * TICK:
                await self._cancel()
            if self.rng.random() < p.retry_rate * TICK:
                await self._retry()
            if self.server is not None:
                self._maybe(p.server_restart_rate, self._server_down)
                self._server_up_if_due()
            self._tend_workers()
            await asyncio.sleep(TICK)

    def _maybe(self, rate: float, action: Any) -> None:
        if self.rng.random() < rate * TICK:
            action()

    def _plan(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        rng, p = self.rng, self.profile
        self.n += 1
        task = rng.choices(list(TASKS), weights=[5, 3, 1])[0]
        lane = rng.choice(LANES) if rng.random() < 0.5 else ""
        attempts = rng.choice([1, 1, 2, 3])
        fail = sorted(a for a in range(1, attempts + 1) if rng.random() < 0.3)
        hang: list[int] = []
        if rng.random() < 0.12 and (task != "chaos_def" or p.def_hang):
            hang = [rng.randint(1, attempts)]
        timeout = p.cpu_timeout if task == "chaos_cpu" else 0.8
        args = dict(n=self.n, lane=lane, work=round(rng.uniform(0.005, 0.2), 3), fail=fail, hang=hang,
                    hang_for=timeout + 1.7)
        opts: dict[str, Any] = {"retries": Retry(attempts=attempts, backoff=0.05, jitter=False)}
        if hang:
            opts["timeout"] = timeout
        elif rng.random() < 0.3:
            opts["timeout"] = 30.0
        if lane:
            opts["key"] = lane
            if rng.random() < 0.03:
                opts["supersede"] = True
        if rng.random() < 0.3:
            opts["priority"] = rng.randint(0, 5)
        if rng.random() < 0.08:
            opts["delay"] = round(rng.uniform(0.1, 2.0), 3)
        if rng.random() < 0.05:
            opts["unique"] = f"u{rng.randint(0, 4)}"
        return task, args, opts

    async def _enqueue_one(self) -> None:
        assert self.store is not None
        task, args, opts = self._plan()
        prepared = TASKS[task].options(**opts).prepare(**args)
        record = prepared.record
        shown = {k: (v.attempts if isinstance(v, Retry) else v) for k, v in opts.items()}
        t0 = time.monotonic()
        try:
            (stored,) = await self._call(self.store.enqueue([record]))
        except Exception as exc:  # a stopped server: not accepted (it may still be stored)
            self.log("enqueue", t0=t0, id=record.id, task=task, args=args, opts=shown,
                     accepted=False, error=f"{type(exc).__name__}: {exc}"[:200])
            return
        dedup = stored.id != record.id
        self.log("enqueue", t0=t0, id=record.id, task=task, args=args, opts=shown, accepted=not dedup,
                 dedup_of=stored.id if dedup else None)
        if not dedup:
            self.accepted.append(record.id)
            self.kinds[record.id] = task

    def _pick_job(self, verb: str) -> str | None:
        recent = self.accepted[-300:]
        if verb == "cancel" and not self.profile.def_hang:
            recent = [j for j in recent if self.kinds[j] != "chaos_def"]
        return self.rng.choice(recent) if recent else None

    async def _cancel(self) -> None:
        await self._by_hand("cancel")

    async def _retry(self) -> None:
        await self._by_hand("retry")

    async def _by_hand(self, verb: str) -> None:
        assert self.store is not None
        job_id = self._pick_job(verb)
        if job_id is None:
            return
        before = "?"
        if verb == "retry":
            # only the driver puts a final job back, so a job final now is still final when the
            # retry arrives: the checker knows which retries took effect
            try:
                rec = await self._call(self.store.get(job_id))
            except Exception:
                return
            if rec is None or not rec.status.terminal:
                return
            before = rec.status.value
        t0 = time.monotonic()
        try:
            rec = await self._call(getattr(self.store, verb)(job_id))
            answer = rec.status.value if rec is not None else "not-found"
        except Exception as exc:
            answer = f"error:{type(exc).__name__}"
        self.log(verb, t0=t0, id=job_id, answer=answer, before=before)

    def _live(self) -> list[int]:
        return [i for i, s in enumerate(self.sessions)
                if s is not None and s.alive and not s.terminating and not s.clean]

    def _kill(self) -> None:
        live = self._live()
        if not live:
            return
        slot = self.rng.choice(live)
        session = self.sessions[slot]
        assert session is not None
        if session.processes > 1 and self.rng.random() < 0.5:
            # one supervised worker process (with its cpu children); the supervisor starts another
            pids = session.pids()
            workers = [p for p in pids if _ppid(p) == session.pid]
            if workers:
                target = self.rng.choice(workers)
                from .procs import children_of
                victims = children_of(target, pids)
                t = time.monotonic()
                session.signal_all(signal.SIGKILL, victims)
                self.log("kill", t_sent=t, slot=slot, pids=victims, whole=False)
                return
        t = time.monotonic()
        pids = session.kill()
        self.log("kill", t_sent=t, slot=slot, pid=session.pid, pids=pids, whole=True)
        self.sessions[slot] = None
        self.restart_at[slot] = time.monotonic() + self.rng.uniform(0.2, 2.0)

    def _stop(self) -> None:
        live = [i for i in self._live() if self.sessions[i].stopped_until is None]  # type: ignore[union-attr]
        if not live:
            return
        slot = self.rng.choice(live)
        session = self.sessions[slot]
        assert session is not None
        # a third of the stops outlast the lease: that worker's jobs go to others meanwhile
        seconds = self.rng.uniform(0.1, 1.2) if self.rng.random() < 0.67 else self.rng.uniform(2.5, 5.0)
        t = time.monotonic()
        pids = session.signal_all(signal.SIGSTOP)
        session.stopped_until = t + seconds
        self.log("stop", t_sent=t, slot=slot, pids=pids, planned=seconds)

    def _term(self) -> None:
        live = self._live()
        if not live:
            return
        slot = self.rng.choice(live)
        session = self.sessions[slot]
        assert session is not None
        group = self.profile.term_group and self.rng.random() < 0.5
        pids = session.pids()
        if session.stopped_until is not None:
            self._cont(slot)
        t = time.monotonic()
        if group:
            # once, to the group, as systemd or a terminal does (signal_all would also send it
            # to each process: two SIGTERMs, which a worker rightly takes as "exit now")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(session.pid, signal.SIGTERM)
        else:
            session.popen.send_signal(signal.SIGTERM)
        session.terminating = True
        self.log("term", t_sent=t, slot=slot, pid=session.pid, pids=pids, group=group)

    def _cont(self, slot: int) -> None:
        session = self.sessions[slot]
        assert session is not None
        t = time.monotonic()
        pids = session.signal_all(signal.SIGCONT)
        session.stopped_until = None
        self.log("cont", t_sent=t, slot=slot, pids=pids)

    def _tend_workers(self) -> None:
        now = time.monotonic()
        for slot, session in enumerate(self.sessions):
            if session is None:
                if slot in self.restart_at and now >= self.restart_at[slot]:
                    del self.restart_at[slot]
                    self._start_worker(slot)
                continue
            if session.stopped_until is not None and now >= session.stopped_until:
                self._cont(slot)
            if not session.alive:
                rc = session.popen.returncode
                self.log("exit", slot=slot, pid=session.pid, rc=rc, expected=session.terminating)
                self.sessions[slot] = None
                self.restart_at[slot] = now + self.rng.uniform(0.2, 1.5)

    def _server_down(self) -> None:
        if self.server_down_until is not None:
            return
        # a crash (Redis: SIGKILL; PostgreSQL: every process at once, no checkpoint) or a
        # clean stop (SIGTERM; PostgreSQL's fast shutdown)
        how = "SIGKILL" if self.rng.random() < 0.4 else "SIGTERM"
        t = time.monotonic()
        if how == "SIGKILL":
            self.server.kill(signal.SIGKILL)
        else:
            self.server.stop()
        self.server_down_until = time.monotonic() + self.rng.uniform(0.3, 1.5)
        self.log("server_down", t_sent=t, how=how)

    def _server_up_if_due(self, force: bool = False) -> None:
        if self.server_down_until is None or (
            not force and time.monotonic() < self.server_down_until
        ):
            return
        self.server.start()
        self.server_down_until = None
        self.log("server_up")

    # -- draining ----------------------------------------------------------------------------
    async def _drain(self) -> None:
        """End the chaos, then let clean workers bring every job to a final status."""
        assert self.store is not None
        self.log("chaos_end")
        if self.server is not None:
            self._server_up_if_due(force=True)
        for slot, session in enumerate(self.sessions):
            if session is None:
                continue
            if session.stopped_until is not None:
                self._cont(slot)
            if session.alive and not session.terminating:
                session.popen.send_signal(signal.SIGTERM)
                session.terminating = True
                self.log("term", t_sent=time.monotonic(), slot=slot, pid=session.pid,
                         pids=session.pids(), group=False,
                         drain=True)
        for _ in range(int((app.SETTINGS.grace + 10) / TICK)):
            for slot, session in enumerate(self.sessions):
                if session is not None and not session.alive:
                    self.log("exit", slot=slot, pid=session.pid, rc=session.popen.returncode,
                             expected=True)
                    self.sessions[slot] = None
            if not any(self.sessions):
                break
            await asyncio.sleep(TICK)
        for slot, session in enumerate(self.sessions):
            if session is not None:
                t = time.monotonic()
                pids = session.kill()
                self.log("kill", t_sent=t, slot=slot, pid=session.pid, pids=pids, whole=True,
                         drain=True)
                self.sessions[slot] = None
        self.restart_at.clear()
        self.log("drain_start")
        clean = [self._start_worker(slot, clean=True) for slot in range(2)]
        deadline = time.monotonic() + self.profile.drain_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                counts = await self._call(self.store.stats(app.QUEUE_NAME))
                if not any(counts.get(s, 0) for s in ("queued", "scheduled", "running")):
                    break
            await asyncio.sleep(0.2)
        else:
            self.log("drain_timeout")
        for session in clean:
            session.popen.send_signal(signal.SIGTERM)
        for session in clean:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(session.popen.wait, app.SETTINGS.grace + 10)
            if session.alive:
                session.kill()
        self.log("drain_end")


def _ppid(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw.rsplit(")", 1)[1].split()[1])
