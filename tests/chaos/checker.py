"""The chaos run's invariant checker: proves the promises from the journals and the final store.

What it is given: the task journal (every execution's start and end, written by the tasks), the
driver log (every enqueue and its answer, every cancel/retry by hand and its answer, every signal),
and the store after draining. What it checks, and exactly how, is in ``docs/reliability.md``; the
short version:

- **final**: every accepted job is in the store and final, with the verdict its plan and the driver's
  cancels allow (a failure the task never raised, e.g. ``ProcessDied``, is a violation);
- **result**: a succeeded job's stored result is the value one of its executions returned, for the
  attempt the store counts;
- **lane**: no two executions of one lane were live at once, and a lane started its jobs in enqueue
  order (jobs retried by hand are left out of the order check);
- **attempts**: no attempt number beyond the policy; starts per job at most ``max_attempts`` per
  epoch (an epoch begins with each retry by hand) plus the executions the chaos interrupted;
- **cancel**: no execution started after a cancel answered ``cancelled`` (unless retried since);
- **finished**: no execution started after the job's ``finished_at``;
- **duplicates**: re-runs of an attempt, each one owed to an interrupted execution.

An execution whose process was SIGSTOPped long enough for its lease to expire (half a lease, so
renewals every third of a lease cannot have saved it) is a *zombie* from then on: the store rightly
gave its job to another worker, and it is allowed to overlap, start late and run after the verdict.
Nothing else is.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from conveyor.model import JobRecord, JobStatus

from .journal import End, Start

__all__ = ["Report", "check"]

#: seconds of slack when comparing a task's wall clock with a stored time (stores keep ms)
WALL_SLACK = 0.002
#: seconds a SIGTERMed worker may take past its grace period to release its jobs and exit
SHUTDOWN_SLACK = 10.0


@dataclass(slots=True)
class Execution:
    """One run of a task: its start line, its end line if it wrote one, and what the driver did."""

    start: Start
    end: End | None = None
    killed_at: float | None = None
    stops: list[tuple[float, float]] = field(default_factory=list)

    @property
    def until(self) -> float:
        """The last moment it is known to have been live (see docs/reliability.md)."""
        if self.end is not None:
            return self.end.mono
        if self.killed_at is not None and self.start.kind != "cpu":
            return self.killed_at  # its worker was alive until the kill, and so was its task
        return self.start.mono  # a cpu child its worker killed: live for sure only at its start


@dataclass(slots=True)
class Report:
    """The checker's verdict on one backend's run."""

    backend: str
    jobs: int = 0
    executions: int = 0
    kills: int = 0
    stops: int = 0
    terms: int = 0
    server_restarts: int = 0
    crashes: int = 0
    duplicates: int = 0
    interrupted: int = 0
    cancels: int = 0
    retries: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def flag(self, kind: str, message: str) -> None:
        """Record one violation."""
        self.violations.append(f"[{kind}] {message}")


def _stop_spans(events: list[dict[str, Any]]) -> dict[int, list[tuple[float, float]]]:
    """pid -> the spans it was stopped (a stop ends at the next SIGCONT or SIGKILL of that pid)."""
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
    open_: dict[int, float] = {}
    for ev in events:
        if ev["ev"] == "stop":
            for pid in ev["pids"]:
                open_.setdefault(pid, ev["t_sent"])
        elif ev["ev"] in ("cont", "kill"):
            for pid in ev["pids"]:
                if pid in open_:
                    spans[pid].append((open_.pop(pid), ev["t_sent"]))
    for pid, s in open_.items():
        spans[pid].append((s, float("inf")))
    return spans


def check(
    backend: str, starts: list[Start], ends: list[End], events: list[dict[str, Any]],
    records: list[JobRecord], *, lease: float, grace: float, max_lost_leases: int | None,
) -> Report:
    """Check every promise; return the report (``violations`` empty when all hold)."""
    rep = Report(backend)
    doubt = lease / 2

    # -- what the driver did ---------------------------------------------------------------
    enq = [e for e in events if e["ev"] == "enqueue"]
    order = {e["id"]: i for i, e in enumerate(enq)}
    plans = {e["id"]: e for e in enq}
    accepted = [e["id"] for e in enq if e["accepted"]]
    kills = [e for e in events if e["ev"] == "kill"]
    rep.jobs = len(accepted)
    rep.kills = len(kills)
    rep.stops = sum(e["ev"] == "stop" for e in events)
    rep.terms = sum(e["ev"] == "term" and not e.get("drain") for e in events)
    rep.server_restarts = sum(e["ev"] == "server_down" for e in events)
    rep.crashes = sum(e["ev"] == "exit" and not e["expected"] for e in events)
    cancels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    retried: dict[str, list[float]] = defaultdict(list)  # job -> times a retry by hand took effect
    for e in events:
        if e["ev"] == "cancel":
            rep.cancels += 1
            cancels[e["id"]].append(e)
        elif e["ev"] == "retry":
            rep.retries += 1
            # the driver retries only jobs it saw final; one that answers `queued` took effect (an
            # error may have: counted as if it had)
            if e["before"] in ("failed", "dead", "cancelled") and (
                e["answer"] == "queued" or e["answer"].startswith("error")
            ):
                retried[e["id"]].append(e["t0"])
    supersede_at: dict[str, list[int]] = defaultdict(list)  # lane -> enqueue indexes
    for i, e in enumerate(enq):
        if e["opts"].get("supersede"):
            supersede_at[e["args"]["lane"]].append(i)
    stops = _stop_spans(events)
    outages: list[tuple[float, float]] = []  # when the server (Redis, PostgreSQL) was down
    for e in events:
        if e["ev"] == "server_down":
            outages.append((e["t_sent"], float("inf")))
        elif e["ev"] == "server_up" and outages:
            outages[-1] = (outages[-1][0], e["t"])
    # SQLite has one writer: a process stopped while it holds the write lock stops every worker's
    # renewals and acknowledgements with it, so there any stop may cost any execution its lease
    shared_lock = backend == "sqlite"
    stall = sorted({span for spans in stops.values() for span in spans})

    def own_stops(ex: Execution) -> list[tuple[float, float]]:
        """When the execution's process, or the worker of a cpu child, was stopped."""
        spans = stops.get(ex.start.pid, [])
        if ex.start.kind == "cpu":
            spans = sorted({*spans, *stops.get(ex.start.ppid, [])})
        return spans

    # -- executions --------------------------------------------------------------------------
    pending: dict[tuple[str, int, int], list[Execution]] = defaultdict(list)
    execs: list[Execution] = []
    lines: list[tuple[float, int, Start | End]] = [(s.mono, 0, s) for s in starts]
    lines += [(x.mono, 1, x) for x in ends]
    for _, _, line in sorted(lines, key=lambda x: (x[0], x[1])):
        k = (line.job, line.attempt, line.pid)
        if isinstance(line, Start):
            ex = Execution(line)
            execs.append(ex)
            pending[k].append(ex)
        elif pending[k]:
            pending[k].pop(0).end = line
        else:
            rep.flag("journal", f"end without a start: {line}")
    for ex in execs:
        for e in kills:
            if ex.start.pid in e["pids"] and e["t_sent"] >= ex.start.mono and (
                ex.end is None or e["t_sent"] <= ex.end.mono
            ):
                ex.killed_at = e["t_sent"]
                break
        ex.stops = stall if shared_lock else own_stops(ex)
    rep.executions = len(execs)

    def zombie(ex: Execution, t: float) -> bool:
        """True when, at ``t``, ``ex``'s lease may have expired because its process was stopped."""
        return any(
            c - s >= doubt and s + doubt <= t and c >= ex.start.mono - lease
            and s <= max(ex.until, ex.start.mono)
            for s, c in ex.stops
        )

    def chaos_between(t0: float, t1: float) -> int:
        """How many signals or server outages in [t0, t1] could have cost a claimed job its run.

        A worker stopped all along cannot have claimed anything in the window, so its signals
        do not count.
        """
        n = 0
        for e in events:
            if e["ev"] not in ("kill", "stop", "term"):
                continue
            if not t0 - (grace if e["ev"] == "term" else 0.0) <= e["t_sent"] <= t1:
                continue
            lead = e.get("pids", [None])[0] if e.get("pids") else None
            if lead is not None and any(s <= t0 and c >= e["t_sent"] for s, c in stops.get(lead, [])):
                continue
            n += 1
        return n + sum(down <= t1 and up >= t0 for down, up in outages)

    def epoch(job: str, t: float) -> int:
        return sum(r < t for r in retried.get(job, []))

    by_job: dict[str, list[Execution]] = defaultdict(list)
    for ex in execs:
        by_job[ex.start.job].append(ex)

    def horizon(ex: Execution) -> float:
        """Until when the chaos could still cost ``ex`` its verdict: the job's next start, if any
        (a result waits in its worker's batch a moment before it is stored)."""
        later = [x.start.mono for x in by_job[ex.start.job] if x.start.mono > ex.start.mono]
        if later:
            return min(later)
        return ex.end.mono if ex.end is not None else float("inf")

    def interrupted(ex: Execution) -> bool:
        """The chaos (or a shutdown) cut this execution short, so its attempt may run again."""
        plan = plans.get(ex.start.job)
        hang = plan["args"]["hang"] if plan else []
        if ex.killed_at is not None or zombie(ex, ex.until + lease) or ex.start.ppid == 1:
            return True
        owner = ex.start.ppid if ex.start.kind == "cpu" else ex.start.pid
        t0, t1 = ex.start.mono - lease, horizon(ex)
        # a SIGTERMed worker releases what still runs when its grace period ends
        if any(e["ev"] in ("term", "kill") and owner in e["pids"]
               and t0 - (grace if e["ev"] == "term" else 0.0) <= e["t_sent"] <= t1 for e in events):
            return True
        if any(c - s >= doubt and t0 <= s <= t1 for s, c in ex.stops):
            return True
        # a store that is down longer than a lease loses the leases of running jobs, and a verdict
        # a worker could not store while it was down
        if any(down <= t1 and up >= t0 for down, up in outages):
            return True
        if ex.end is None:
            return not (ex.start.kind == "cpu" and ex.start.attempt in hang)
        return ex.end.outcome == "cancelled" and ex.start.attempt not in hang

    # -- final status and results ------------------------------------------------------------
    store = {r.id: r for r in records}
    for stored in records:
        rep.statuses[stored.status.value] += 1
        if stored.id not in order:
            rep.flag("final", f"job {stored.id} is in the store but was never enqueued by the driver")
    for job_id in accepted:
        rec = store.get(job_id)
        plan = plans[job_id]
        if rec is None:
            rep.flag("final", f"job {job_id} (#{order[job_id]}) was accepted and is not in the store")
            continue
        if not rec.status.terminal:
            rep.flag("final", f"job {job_id} (#{order[job_id]}) is still {rec.status.value} after the drain")
            continue
        _check_verdict(rep, rec, plan, by_job[job_id], cancels.get(job_id, []), supersede_at,
                       order, interrupted, max_lost_leases)
    for job_id in order:
        final = store.get(job_id)
        if final is None or final.finished_at is None:
            continue
        done = final.finished_at.timestamp()
        for ex in by_job[job_id]:
            if ex.start.wall > done + WALL_SLACK and not zombie(ex, ex.start.mono):
                rep.flag("finished", f"job {job_id} started (attempt {ex.start.attempt}, pid "
                                     f"{ex.start.pid}) {ex.start.wall - done:.3f} s after its stored "
                                     f"finished_at")

    # -- cancel ------------------------------------------------------------------------------
    for job_id, evs in cancels.items():
        for e in evs:
            if e["answer"] != "cancelled":
                continue
            again = [r for r in retried.get(job_id, []) if r >= e["t0"]]
            for ex in by_job[job_id]:
                if ex.start.mono > e["t0"] and not (again and ex.start.mono > min(again)) \
                        and not zombie(ex, ex.start.mono):
                    rep.flag("cancel", f"job {job_id} started (attempt {ex.start.attempt}, pid "
                                       f"{ex.start.pid}) {ex.start.mono - e['t']:.3f} s after a cancel "
                                       f"answered 'cancelled'")

    # -- attempts and duplicates -------------------------------------------------------------
    for job_id, exs in by_job.items():
        enqueued = plans.get(job_id)
        if enqueued is None:
            rep.flag("journal", f"an execution of job {job_id}, which the driver never enqueued")
            continue
        max_attempts, hang = enqueued["opts"]["retries"], enqueued["args"]["hang"]
        cuts = [interrupted(ex) for ex in exs]
        rep.interrupted += sum(cuts)
        epochs = 1 + len(retried.get(job_id, []))
        if len(exs) > max_attempts * epochs + sum(cuts):
            rep.flag("attempts", f"job {job_id} started {len(exs)} times: policy {max_attempts} x "
                                 f"{epochs} epoch(s) + {sum(cuts)} interrupted")
        for i, ex in enumerate(exs):
            era = epoch(job_id, ex.start.mono)
            before = [j for j in range(i) if epoch(job_id, exs[j].start.mono) == era]
            # every claim counts an attempt, also one whose worker died before the task started
            # (a lost lease gives none back): attempt numbers the journal never saw are claims
            # lost, and each needs a kill, stop, SIGTERM or server restart to explain it
            since = max([enqueued["t0"], *(r for r in retried.get(job_id, []) if r < ex.start.mono)]
                        + [exs[j].start.mono for j in before])
            skipped = ex.start.attempt - 1 - (exs[before[-1]].start.attempt if before else 0)
            if skipped > chaos_between(since, ex.start.mono):
                rep.flag("attempts", f"job {job_id} ran attempt {ex.start.attempt} of {max_attempts} "
                                     f"(run #{len(before) + 1}): {skipped} claim(s) before it never started "
                                     f"and no chaos since {ex.start.mono - since:.2f} s before")
            if ex.start.kind == "cpu" and ex.start.ppid == 1:
                rep.flag("orphan", f"job {job_id} attempt {ex.start.attempt} started in cpu child "
                                   f"{ex.start.pid} after its worker had died")
            # a stale claim: this run holds an older attempt number than a run that started
            # before it, so it was claimed before that one. Allowed for a process stopped after
            # it claimed (its lease expired: a zombie); not for one stopped before the job could
            # be claimed at all (enqueued or retried during the stop): it was handed the job
            newer = [exs[j] for j in before if exs[j].start.attempt > ex.start.attempt]
            for s_, c_ in own_stops(ex):
                became = [t for t in (enqueued["t0"], *retried.get(job_id, [])) if s_ < t < c_]
                if newer and became and c_ <= ex.start.mono:
                    rep.flag("handoff", f"job {job_id} attempt {ex.start.attempt} ran in pid "
                                        f"{ex.start.pid} {ex.start.mono - c_:.3f} s after its SIGCONT, "
                                        f"after attempt {newer[0].start.attempt} had run in pid "
                                        f"{newer[0].start.pid}: the job became claimable "
                                        f"{min(became) - s_:.3f} s after the process was stopped")
                    break
            if not before:
                continue
            prev = exs[before[-1]]
            # a planned failure or timeout calls for the next attempt; anything else must have
            # been cut short for the job to run again
            called_for = prev.start.attempt in hang or (
                prev.end is not None and prev.end.outcome == "fail"
            )
            if called_for:
                continue
            rep.duplicates += 1
            if not cuts[before[-1]] and not zombie(ex, ex.start.mono):
                rep.flag("duplicates", f"job {job_id} ran again (attempt {ex.start.attempt}, pid "
                                       f"{ex.start.pid}) after an execution (attempt "
                                       f"{prev.start.attempt}, pid {prev.start.pid}, "
                                       f"{prev.end.outcome if prev.end else 'no end'}) nothing "
                                       f"interrupted")

    # -- shutdown ----------------------------------------------------------------------------
    # a SIGTERMed worker lets its jobs run for `grace` seconds, releases the rest, and exits
    for e in events:
        if e["ev"] != "term" or "pid" not in e:
            continue
        gone = [x for x in events if x["ev"] in ("exit", "kill") and x.get("pid") == e["pid"]
                and x["t"] >= e["t_sent"]]
        took = (gone[0]["t"] if gone else float("inf")) - e["t_sent"]
        if took > grace + SHUTDOWN_SLACK:
            how = "exited" if gone and gone[0]["ev"] == "exit" else "was still running and was killed"
            rep.flag("shutdown", f"worker {e['pid']} (slot {e['slot']}) got SIGTERM"
                                 f"{' (process group)' if e['group'] else ''} and {how} "
                                 f"{took:.1f} s later (grace {grace:g} s)")

    # -- lanes -------------------------------------------------------------------------------
    lanes: dict[str, list[Execution]] = defaultdict(list)
    for ex in execs:
        if ex.start.lane is not None:
            lanes[ex.start.lane].append(ex)
    for lane, exs in lanes.items():
        exs.sort(key=lambda x: x.start.mono)
        for i, b in enumerate(exs):
            for a in exs[:i]:
                t = b.start.mono
                if a.until > t and not zombie(a, t) and not zombie(b, t):
                    rep.flag("lane", f"lane {lane}: job {b.start.job} (attempt {b.start.attempt}, "
                                     f"{b.start.kind}, pid {b.start.pid}) started while job "
                                     f"{a.start.job} (attempt {a.start.attempt}, {a.start.kind}, pid "
                                     f"{a.start.pid}) ran for {a.until - t:.3f} s more")
        ordered = [ex for ex in exs if ex.start.job not in retried and ex.start.job in order
                   and not zombie(ex, ex.start.mono)]
        for prev, nxt in itertools.pairwise(ordered):
            if order[nxt.start.job] < order[prev.start.job]:
                rep.flag("order", f"lane {lane}: job #{order[nxt.start.job]} {nxt.start.job} started "
                                  f"after job #{order[prev.start.job]} {prev.start.job}, "
                                  f"enqueued after it")
    return rep


def _check_verdict(
    rep: Report, rec: JobRecord, plan: dict[str, Any], exs: list[Execution],
    cancels: list[dict[str, Any]], supersede_at: dict[str, list[int]], order: dict[str, int],
    interrupted: Any, max_lost_leases: int | None,
) -> None:
    """The final status is one the plan, the driver's cancels and the chaos allow."""
    args, max_attempts = plan["args"], plan["opts"]["retries"]
    name = f"job {rec.id} (#{order[rec.id]}, {plan['task']}, plan fail={args['fail']} hang={args['hang']})"
    if rec.status is JobStatus.SUCCEEDED:
        if rec.attempts in args["fail"] or rec.attempts in args["hang"]:
            rep.flag("final", f"{name} succeeded on attempt {rec.attempts}, planned to fail")
        if not any(ex.end is not None and ex.end.outcome == "ok" and ex.end.value == rec.result
                   and ex.end.attempt == rec.attempts for ex in exs):
            rep.flag("result", f"{name}: stored result {rec.result!r} (attempt {rec.attempts}) is "
                               f"not what any of its executions returned")
        return
    if rec.status is JobStatus.CANCELLED:
        lane = args["lane"]
        superseded = any(i > order[rec.id] for i in supersede_at.get(lane, [])) if lane else False
        if not cancels and not superseded:
            rep.flag("final", f"{name} ended cancelled, but nobody cancelled it")
        return
    error = rec.error or {"type": "?", "message": "", "traceback": ""}
    kind = error["type"]
    if kind == "WorkerLost":
        cut = sum(interrupted(ex) for ex in exs)
        if max_lost_leases is None or cut < max_lost_leases:
            rep.flag("final", f"{name} ended {rec.status.value} WorkerLost with only {cut} "
                              f"interrupted execution(s): {error['message']}")
        return
    if kind.rsplit(".", 1)[-1] in ("ChaosFailure", "TimeoutError"):
        kind = kind.rsplit(".", 1)[-1]
        last = rec.attempts
        planned = args["fail"] if kind == "ChaosFailure" else args["hang"]
        stopped = kind == "TimeoutError" and any(ex.stops for ex in exs if ex.start.attempt == last)
        if last < max_attempts or (last not in planned and not stopped and last <= max_attempts):
            ran = any(ex.start.attempt == last for ex in exs)
            rep.flag("final", f"{name} ended {rec.status.value} after attempt {last}/{max_attempts} "
                              f"with {kind}: {error['message']}"
                              + ("" if ran else f" (attempt {last} never started)"))
        return
    rep.flag("final", f"{name} ended {rec.status.value} with a failure the task never raised: "
                      f"{kind}: {error['message'][:160]}")
