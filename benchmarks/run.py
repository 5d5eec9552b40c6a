"""conveyor benchmarks: enqueue rate, drain rate and pickup latency, per backend.

    make bench                       # or: .venv/bin/python benchmarks/run.py
    python benchmarks/run.py --targets sqlite-full --only drain --jobs 5000

Each measurement is one ``async def measure_*(url, params) -> dict[str, float]`` run against a fresh,
empty store whose URL a *target* hands out; adding a backend is one entry in ``TARGETS``, adding a
figure is one function in ``MEASUREMENTS``. Every run is saved as ``results/<UTC time>.json`` and
compared with the run before it. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.bench_app` importable
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.bench_app import make_queue  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
APP = "benchmarks.bench_app:queue"
OBSERVED_APP = "benchmarks.bench_observed:queue"  # the same, OpenTelemetry and Prometheus on
# wide enough for the results table when the output is a file or a pipe
console = Console() if sys.stdout.isatty() else Console(width=130)


# -- parameters and goals ------------------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    """How much work each measurement does."""

    single: int = 3_000  # jobs enqueued one call at a time
    batched: int = 20_000  # jobs enqueued with enqueue_many
    batch_size: int = 500
    jobs: int = 20_000  # jobs drained by one worker process
    concurrency: int = 100  # the draining worker's --concurrency
    samples: int = 300  # pickup latency samples
    repeat: int = 3  # runs of each measurement; the median of each figure is kept
    growth: int = 1_000_000  # finished jobs in the grown store (and a tenth as many delayed)
    growth_rounds: int = 50  # timed calls of each growth figure (claims; enqueues are twice that)
    snapshot: float = 60.0  # seconds of churn with (and without) a REPEATABLE READ snapshot held
    soak: int = 1_000_000  # jobs one worker runs while its RSS is read (only with --soak)
    worker_prefix: tuple[str, ...] = ()  # e.g. ("py-spy", "record", "-o", "x.svg", "--")


@dataclass(frozen=True)
class Goal:
    metric: str
    op: str  # ">=" or "<="
    value: float
    targets: tuple[str, ...] = ()  # where it applies; none named: the targets with goals=True

    def met(self, got: float) -> bool:
        return got >= self.value if self.op == ">=" else got <= self.value


GOALS = [Goal("drain_jobs_per_s", ">=", 5_000), Goal("pickup_p50_ms", "<=", 10.0),
         Goal("drain_observed_ratio", ">=", 0.70, targets=("redis",))]

# how each figure is shown, and whether more is better
METRICS: dict[str, tuple[str, bool]] = {
    "enqueue_single_jobs_per_s": ("enqueue, one call per job (jobs/s)", True),
    "enqueue_batch_jobs_per_s": ("enqueue_many, batches of {batch_size} (jobs/s)", True),
    "drain_jobs_per_s": ("drain {jobs} no-op jobs, 1 worker process (jobs/s)", True),
    "drain_observed_jobs_per_s": ("drain, OpenTelemetry + Prometheus middlewares on (jobs/s)", True),
    "drain_observed_ratio": ("drain with both middlewares / bare drain", True),
    "pickup_p50_ms": ("pickup latency p50 (ms)", False),
    "pickup_p99_ms": ("pickup latency p99 (ms)", False),
}


# -- targets: where the jobs are stored ------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A backend under test: ``fresh()`` yields the URL of an empty store and removes it afterwards."""

    name: str
    describe: str
    fresh: Callable[[], AbstractContextManager[str]]
    goals: bool = False  # whether GOALS apply to this target


def sqlite_target(synchronous: str, *, goals: bool = False) -> Target:
    """A SQLite file in a temporary directory on the local disk."""

    @contextmanager
    def fresh() -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
            query = "" if synchronous == "full" else f"?synchronous={synchronous}"
            yield f"sqlite:///{tmp}/bench.db{query}"

    label = "the default" if synchronous == "full" else "opt-in"
    return Target(f"sqlite-{synchronous}", f"SQLite, synchronous={synchronous} ({label})", fresh, goals)


def redis_target() -> Target | None:
    """A throwaway redis-server on a free port (see benchmarks/redis_bench.py); None without one."""
    from benchmarks.redis_bench import fresh_redis, redis_server_binary

    if redis_server_binary() is None:
        return None
    return Target("redis", "Redis, a local redis-server (AOF off)", fresh_redis)


def postgres_target() -> Target | None:
    """A throwaway database on the local PostgreSQL (benchmarks/postgres_bench.py); None without one."""
    from benchmarks.postgres_bench import fresh_postgres, postgres_reachable

    if not postgres_reachable():
        return None
    return Target("postgresql", "PostgreSQL, the local server (a database of its own)", fresh_postgres)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (sqlite_target("full", goals=True), sqlite_target("normal"), redis_target(),
              postgres_target())
    if t is not None
}


# -- a worker process, started through the CLI -----------------------------------------------------
def _new_log() -> tuple[Path, int]:
    fd, name = tempfile.mkstemp(prefix="conveyor-bench-worker-", suffix=".log")
    return Path(name), fd


def _take_log(log: Path) -> str:
    text = log.read_text(errors="replace")
    log.unlink(missing_ok=True)
    return text


@asynccontextmanager
async def worker_process(
    url: str, concurrency: int, params: Params, app: str = APP,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``python -m conveyor worker`` on ``url`` until the block ends; fail if it dies early."""
    log, fd = _new_log()
    cmd = [*params.worker_prefix, sys.executable, "-m", "conveyor", "worker", app,
           "--concurrency", str(concurrency), "--log-level", "warning"]
    env = {**os.environ, "CONVEYOR_URL": url}
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT
        )
    finally:
        os.close(fd)
    early: int | None = None
    try:
        yield proc
        early = proc.returncode
    finally:
        if proc.returncode is None:
            # SIGINT lets a profiler wrapped around the worker write its report before it exits
            proc.send_signal(signal.SIGINT if params.worker_prefix else signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        output = _take_log(log)
        if early is not None or proc.returncode not in (0, -signal.SIGTERM):
            console.print(f"[yellow]worker output (exit {proc.returncode}):[/]\n{output}")
    if early is not None:
        raise RuntimeError(f"the worker exited early, with {early}")


async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str,
                 interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout} s")
        await asyncio.sleep(interval)


# -- measurements: one function per figure ---------------------------------------------------------
async def measure_enqueue_single(url: str, p: Params) -> dict[str, float]:
    """``await task.enqueue()`` in a loop: one transaction (and, by default, one fsync) per job."""
    queue = make_queue(url)
    noop = queue.tasks["noop"]
    async with queue:
        await noop.enqueue()  # schema and connection set up outside the clock
        start = time.perf_counter()
        for _ in range(p.single):
            await noop.enqueue()
        elapsed = time.perf_counter() - start
    return {"enqueue_single_jobs_per_s": p.single / elapsed}


async def measure_enqueue_batch(url: str, p: Params) -> dict[str, float]:
    """``queue.enqueue_many([task.prepare() ...])``: validation included, one transaction per batch."""
    queue = make_queue(url)
    noop = queue.tasks["noop"]
    async with queue:
        await noop.enqueue()
        start = time.perf_counter()
        for done in range(0, p.batched, p.batch_size):
            await queue.enqueue_many([noop.prepare() for _ in range(min(p.batch_size, p.batched - done))])
        elapsed = time.perf_counter() - start
    return {"enqueue_batch_jobs_per_s": p.batched / elapsed}


async def measure_drain(url: str, p: Params, *, observed: bool = False) -> dict[str, float]:
    """Pre-enqueue ``jobs`` no-op jobs, then start one worker process and time it emptying the queue.

    The clock runs from the first job's ``started_at`` to the last ``finished_at`` (both stamped by
    the backend); the runner only polls ``stats()`` now and then to know when it is over.
    ``observed``: the worker (and the enqueue, whose trace context each job carries) has the
    OpenTelemetry and Prometheus middlewares on.
    """
    queue = make_queue(url, observed=observed)
    noop = queue.tasks["noop"]
    async with queue:
        first = None
        for done in range(0, p.jobs, 1_000):
            batch = await queue.enqueue_many([noop.prepare() for _ in range(min(1_000, p.jobs - done))])
            first = first or batch[0]
        assert first is not None

        async def drained() -> bool:
            return (await queue.stats())["succeeded"] >= p.jobs

        async with worker_process(url, p.concurrency, p, OBSERVED_APP if observed else APP):
            await _until(drained, timeout=max(120.0, p.jobs / 100), what="drain", interval=0.2)
        started = (await first.info()).started_at
        # jobs are claimed in enqueue order, so the last to finish is among the newest few hundred
        tail = await queue.list_jobs(status="succeeded", limit=max(1_000, 5 * p.concurrency))
        finished = max(r.finished_at for r in tail if r.finished_at is not None)
        assert started is not None
    seconds = (finished - started).total_seconds()
    if observed:
        return {"drain_observed_jobs_per_s": p.jobs / seconds, "drain_observed_seconds": seconds}
    return {"drain_jobs_per_s": p.jobs / seconds, "drain_seconds": seconds}


async def measure_drain_observed(url: str, p: Params) -> dict[str, float]:
    """The drain with the OpenTelemetry and Prometheus middlewares on (bench_observed.py)."""
    return await measure_drain(url, p, observed=True)


async def measure_pickup(url: str, p: Params) -> dict[str, float]:
    """Enqueue one job at a time to an idle worker in another process; the job stamps its start.

    Latency = the job's own ``time.time()`` at start minus ``time.time()`` just before enqueue
    (one machine, one clock): the enqueue's commit, the worker noticing, claiming and starting it.
    """
    queue = make_queue(url)
    task = queue.tasks["started_at"]
    async with queue, worker_process(url, 10, p):
        # wait until the worker is up, then warm it
        for _ in range(10):
            await (await task.enqueue(time.time())).result(timeout=60)
        latencies = []
        for _ in range(p.samples):
            await asyncio.sleep(random.uniform(0.005, 0.015))  # an idle worker, not in lock-step
            sent = time.time()
            job = await task.enqueue(sent)
            began = await job.result(timeout=30)
            latencies.append((began - sent) * 1000)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"pickup_p50_ms": statistics.median(latencies), "pickup_p99_ms": cuts[98],
            "pickup_mean_ms": statistics.fmean(latencies), "pickup_max_ms": max(latencies)}


async def measure_growth(url: str, p: Params) -> dict[str, float]:
    """The same figures on an empty store and on one grown to ``p.growth`` finished jobs (growth.py)."""
    from benchmarks.growth import measure_growth as growth

    return await growth(url, p.growth, p.growth_rounds)


async def measure_snapshot_drain(url: str, p: Params) -> dict[str, float]:
    """PostgreSQL: drain while another session holds a REPEATABLE READ snapshot (pg_growth.py)."""
    from benchmarks.pg_growth import measure_snapshot_drain as snapshot_drain

    return await snapshot_drain(url, p.snapshot)


async def measure_soak(url: str, p: Params) -> dict[str, float]:
    """One worker process's RSS over ``p.soak`` jobs (soak.py)."""
    from benchmarks.soak import measure_soak as soak

    return await soak(url, p.soak, lambda: worker_process(url, p.concurrency, p))


Measurement = Callable[[str, Params], Awaitable[dict[str, float]]]
MEASUREMENTS: dict[str, Measurement] = {
    "enqueue_single": measure_enqueue_single,
    "enqueue_batch": measure_enqueue_batch,
    "drain": measure_drain,
    "drain_observed": measure_drain_observed,
    "pickup": measure_pickup,
    "growth": measure_growth,
    "snapshot_drain": measure_snapshot_drain,
    "soak": measure_soak,
}
#: measurements run once whatever --repeat says (they take minutes), and on these targets unless
#: --targets names others
ONCE: dict[str, set[str]] = {
    "growth": {"sqlite-full", "redis", "postgresql"}, "snapshot_drain": {"postgresql"},
    "soak": {"sqlite-full", "redis"},
}
#: what a run measures unless --only says otherwise: growth only in a plain run (no --targets, as
#: `make bench` runs it), since it takes minutes; the soak only with --soak
QUICK = [m for m in MEASUREMENTS if m not in ONCE]


# -- running, saving, comparing ---------------------------------------------------------------------
@dataclass
class Run:
    when: str
    commit: str
    machine: dict[str, Any]
    params: dict[str, Any]
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    # every repeat's figures, before taking medians
    raw: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine() -> dict[str, Any]:
    import sqlite3

    return {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(), "cpus": os.cpu_count()}


async def run_all(targets: list[Target], names: list[str], p: Params, *,
                  every_target: bool = False) -> Run:
    dirty = "+dirty" if _git("status", "--porcelain", "--untracked-files=no", "src") else ""
    run = Run(when=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), commit=_git("rev-parse", "--short",
              "HEAD") + dirty, machine=machine(), params={k: v for k, v in asdict(p).items()
                                                           if k != "worker_prefix"})
    run.machine["load_before"] = os.getloadavg()[0]
    for target in targets:
        raw: dict[str, list[float]] = {}
        # round after round of every figure, so figures compared with each other (drain with and
        # without middlewares) see the same spells of load on a shared machine
        for i in range(p.repeat):
            for name in names:
                if name in ONCE and (i > 0 or (not every_target and target.name not in ONCE[name])):
                    continue
                repeat = 1 if name in ONCE else p.repeat
                console.print(f"[dim]{target.name}: {name} {i + 1}/{repeat}…[/]", end=" ")
                with target.fresh() as url:
                    got = await MEASUREMENTS[name](url, p)
                shown = list(got.items()) if len(got) <= 8 else [(k, v) for k, v in got.items()
                                                                 if "@" not in k][:6]
                console.print(", ".join(f"{k} {v:,.1f}" for k, v in shown))
                for k, v in got.items():
                    raw.setdefault(k, []).append(round(v, 3))
        run.raw[target.name] = raw
        figures = run.results[target.name] = {k: round(statistics.median(v), 3) for k, v in raw.items()}
        pairs = list(zip(raw.get("drain_observed_jobs_per_s", []), raw.get("drain_jobs_per_s", []),
                         strict=False))
        if pairs:
            # each round's two drains ran back to back: their ratio is far steadier on a busy
            # machine than the ratio of two medians taken minutes apart
            ratios = [observed / bare for observed, bare in pairs if bare]
            raw["drain_observed_ratio"] = [round(r, 3) for r in ratios]
            figures["drain_observed_ratio"] = round(statistics.median(ratios), 3)
    run.machine["load_after"] = os.getloadavg()[0]
    return run


def previous_run(exclude: Path | None = None) -> tuple[str, dict[str, Any]] | None:
    """For each target, its figures from the newest earlier run that measured it.

    Runs of one target only (``--targets redis``) must not hide the others' last figures.
    """
    files = sorted((f for f in RESULTS.glob("*.json") if f != exclude), reverse=True)
    merged: dict[str, Any] = {}
    sources: list[str] = []
    for f in files:
        data = json.loads(f.read_text())
        new = {t: r for t, r in data.get("results", {}).items() if t not in merged}
        if new:
            merged.update(new)
            sources.append(f"{f.name} ({data.get('commit', '?')}): {', '.join(sorted(new))}")
    if not merged:
        return None
    return "; ".join(sources), {"results": merged}


def report(run: Run, p: Params, before: tuple[str, dict[str, Any]] | None) -> bool:
    """Print the figures beside the previous run's; return False if a goal was missed."""
    old = before[1]["results"] if before else {}
    title = f"conveyor benchmarks · {run.when} · {run.commit}"
    if before:
        title += f"  (compared with {before[0]})"
    table = Table(title=title, title_justify="left")
    for col, just in (("target", "left"), ("figure", "left"), ("now", "right"), ("before", "right"),
                      ("change", "right"), ("goal", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    all_met = True
    for target_name, figures in run.results.items():
        target = TARGETS.get(target_name)
        for metric, (label, higher_better) in METRICS.items():
            if metric not in figures:
                continue
            now = figures[metric]
            prev = old.get(target_name, {}).get(metric)
            change = ""
            if prev:
                pct = (now - prev) / prev * 100
                better = (pct > 0) == higher_better
                style = "green" if better and abs(pct) >= 5 else "red" if abs(pct) >= 5 else "dim"
                change = f"[{style}]{pct:+.0f}%[/]"
            goal_text = ""
            goal = next((g for g in GOALS if g.metric == metric), None)
            if goal is not None and target is not None and (
                target_name in goal.targets if goal.targets else target.goals
            ):
                met = goal.met(now)
                all_met &= met
                goal_text = f"[{'green' if met else 'bold red'}]{'met' if met else 'MISSED'} " \
                            f"({goal.op} {goal.value:,g})[/]"
            shown = ",.2f" if abs(now) < 10 else ",.1f"
            table.add_row(target_name, label.format(**asdict(p)), f"{now:{shown}}",
                          f"{prev:{shown}}" if prev else "-", change, goal_text)
        table.add_section()
    if table.row_count:
        console.print(table)
    return growth_report(run, p) and all_met


def growth_report(run: Run, p: Params) -> bool:
    """The growth and soak figures, empty store beside grown store; False if a goal was missed."""
    from benchmarks.growth import growth_rows
    from benchmarks.pg_growth import snapshot_rows
    from benchmarks.soak import soak_rows

    rows = {t: growth_rows(f) + snapshot_rows(f) + soak_rows(f) for t, f in run.results.items()}
    if not any(rows.values()):
        return True
    grown = any("store_finished" in f for f in run.results.values())
    title = (f"as the store grows: an empty store vs {p.growth:,} finished + {p.growth // 10:,} delayed "
             "jobs" if grown else "memory over a long run")
    table = Table(title=title, title_justify="left")
    for col, just in (("target", "left"), ("figure", "left"), ("empty", "right"), ("grown", "right"),
                      ("grown/empty", "right"), ("goal", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for target_name, target_rows in rows.items():
        for row in target_rows:
            table.add_row(target_name, *row)
        if target_rows:
            table.add_section()
    console.print(table)
    return not any("MISSED" in row[-1] for target_rows in rows.values() for row in target_rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated, from {sorted(TARGETS)} (default: all)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated, from {list(MEASUREMENTS)} (default: {','.join(QUICK)}, "
                             "plus growth when no --targets is given, as in `make bench`)")
    parser.add_argument("--growth", type=int, default=Params.growth,
                        help="finished jobs in the grown store (a tenth as many delayed; e.g. 20000 "
                             "for a quick check)")
    parser.add_argument("--growth-rounds", type=int, default=Params.growth_rounds,
                        help="timed calls of each growth figure")
    parser.add_argument("--snapshot-seconds", type=float, default=Params.snapshot,
                        help="PostgreSQL: seconds of churn with, and without, an old snapshot held")
    parser.add_argument("--soak", type=int, nargs="?", const=Params.soak, default=0, metavar="JOBS",
                        help=f"also measure one worker's RSS over JOBS jobs (default {Params.soak:,})")
    parser.add_argument("--jobs", type=int, default=Params.jobs, help="jobs to drain")
    parser.add_argument("--concurrency", type=int, default=Params.concurrency,
                        help="the draining worker's --concurrency")
    parser.add_argument("--samples", type=int, default=Params.samples, help="pickup latency samples")
    parser.add_argument("--single", type=int, default=Params.single, help="jobs enqueued one by one")
    parser.add_argument("--repeat", type=int, default=Params.repeat,
                        help="runs of each measurement (the median is kept)")
    parser.add_argument("--worker-prefix", default="",
                        help="run the worker under this command, e.g. 'py-spy record -o w.svg --'")
    parser.add_argument("--no-save", action="store_true", help="print only; write no results file")
    args = parser.parse_args()

    every_target = args.targets != parser.get_default("targets")
    default_only = QUICK if every_target else [*QUICK, "growth", "snapshot_drain"]
    only = args.only.split(",") if args.only is not None else list(default_only)
    if args.soak and "soak" not in only:
        only.append("soak")
    unknown = set(args.targets.split(",")) - set(TARGETS) | set(only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown target or measurement: {sorted(unknown)}")
    if "growth" in only and args.growth < 2_000:
        parser.error("--growth needs at least 2,000 jobs")
    p = Params(jobs=args.jobs, concurrency=args.concurrency, samples=args.samples, single=args.single,
               repeat=args.repeat, growth=args.growth, growth_rounds=args.growth_rounds,
               snapshot=args.snapshot_seconds,
               soak=args.soak or Params.soak, worker_prefix=tuple(args.worker_prefix.split()))
    run = asyncio.run(run_all([TARGETS[t] for t in args.targets.split(",")], only, p,
                              every_target=every_target))

    before = previous_run()
    all_met = report(run, p, before)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{run.when.replace(':', '')}.json"
        path.write_text(json.dumps(asdict(run), indent=2) + "\n")
        console.print(f"saved {path.relative_to(ROOT)}")
    load = run.machine["load_before"]
    if load > 1.0:
        console.print(f"[yellow]note: the machine was already busy (load average {load:.1f} on "
                      f"{os.cpu_count()} cores): figures are noisier and lower than on a quiet machine[/]")
    if not all_met:
        console.print("[bold red]a goal was missed[/] (see benchmarks/README.md for the profile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
