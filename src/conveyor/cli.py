"""The ``conveyor`` command: run workers, and look at jobs.

Parse arguments, load the user's queue, call the library. Signal handlers and logging set-up
live here and nowhere else.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from conveyor.errors import BackendError, ConfigError, ConveyorError, StartupError
from conveyor.logs import JobContextFilter, JobFormatter, JsonFormatter
from conveyor.model import JobRecord
from conveyor.queue import Queue
from conveyor.worker import Worker

__all__ = ["app", "load_queue", "main"]

T = TypeVar("T")

app = typer.Typer(
    help="conveyor: background jobs for FastAPI and asyncio apps.",
    no_args_is_help=True, add_completion=False,
)
jobs_app = typer.Typer(help="Look at and act on jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
console = Console()
err_console = Console(stderr=True)

AppArg = Annotated[str, typer.Argument(help="Where your queue lives: 'package.module:queue'.")]

#: the exit code of a worker whose start-up (lifespan, middleware) failed: not restarted
STARTUP_FAILED = 3
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def load_queue(spec: str) -> Queue:
    """Import ``module:attribute`` and return the Queue it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected 'module:queue', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, Queue):
        raise ConfigError(f"{spec!r} is a {type(obj).__name__}, not a conveyor Queue")
    return obj


def _setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr: plain text (rich on a terminal) or JSON lines; job fields on every record."""
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(JobFormatter("%(job)s%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(JobFormatter())
    handler.addFilter(JobContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(2)


@app.command()
def worker(
    target: AppArg,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1,
                                             help="Jobs run at once per process.")] = 10,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1,
                                           help="Worker processes to run.")] = 1,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queue names "
                                               "(default: the queue's own).")] = None,
    grace: Annotated[float | None, typer.Option(help="Seconds running jobs get to finish "
                                                "on SIGTERM.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    log_format: Annotated[Literal["text", "json"], typer.Option(
        help="text, or json: one JSON object per line. Records logged while a job runs carry "
             "its id, task, queue and attempt.")] = "text",
    metrics_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Serve Prometheus metrics on this port (needs conveyor[prometheus]; "
                               "all processes' together with --processes).")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address the metrics port listens on.")] = "0.0.0.0",
    metrics_collect: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Run a worker: claim and run jobs until SIGTERM/SIGINT (a second signal exits at once)."""
    _setup_logging(log_level, log_format)
    made_dir = None
    if processes > 1 and metrics_port is not None and not os.environ.get(_MULTIPROC_ENV):
        # before anything imports prometheus_client: it picks its mode on import
        made_dir = os.environ[_MULTIPROC_ENV] = tempfile.mkdtemp(prefix="conveyor-metrics-")
    try:
        queue = load_queue(target)
    except (ConveyorError, ImportError) as exc:
        raise _fail(exc) from None
    names = [q.strip() for q in queues.split(",")] if queues else None
    if processes > 1:
        metrics = (metrics_host, metrics_port) if metrics_port is not None else None
        try:
            code = _supervise(sys.argv[1:], processes, metrics)
        finally:
            if made_dir is not None:
                shutil.rmtree(made_dir, ignore_errors=True)
        raise typer.Exit(code)
    if metrics_port is not None or metrics_collect:
        _add_metrics(queue, None if metrics_collect else (metrics_host, metrics_port))
    code = asyncio.run(_work(queue, concurrency, names, grace))
    abandoned = [t.name for t in threading.enumerate() if t.name.startswith("conveyor-job")]
    if abandoned:
        # a `def` job that outlived the grace period cannot be stopped (its job is already back
        # in the queue); don't let its thread hold the process open
        logging.getLogger("conveyor").warning(
            "exiting with %d job thread(s) still running past the grace period", len(abandoned)
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


async def _work(queue: Queue, concurrency: int, queues: list[str] | None, grace: float | None) -> int:
    wk = queue.worker(concurrency=concurrency, queues=queues, grace=grace)
    loop = asyncio.get_running_loop()
    signals = 0

    def exit_now() -> None:
        logging.getLogger("conveyor").warning("second signal: exiting now; leases bring "
                                              "running jobs back")
        os._exit(1)

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            exit_now()
        logging.getLogger("conveyor").info("%s: finishing running jobs (a second signal exits "
                                           "at once)", signal.Signals(signum).name)
        wk.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if not await _reach_backend(queue, wk):
        return 0  # asked to stop before the backend ever answered
    # from a --processes supervisor: SIGUSR1 asks for the graceful stop without counting as a
    # signal (the same SIGTERM may also reach this process directly, from systemd or a killpg,
    # and must not count twice); SIGUSR2 is its "second signal"
    loop.add_signal_handler(signal.SIGUSR1, wk.request_stop)
    loop.add_signal_handler(signal.SIGUSR2, exit_now)
    try:
        await wk.run()
    except StartupError as exc:
        logging.getLogger("conveyor").error("%s", exc, exc_info=exc.__cause__)
        return STARTUP_FAILED
    finally:
        await queue.close()
    return 0


def _prometheus() -> Any:
    """The conveyor.prometheus module, or a clear error without prometheus_client."""
    try:
        return importlib.import_module("conveyor.prometheus")
    except ImportError as exc:
        raise _fail(ConfigError(
            f"--metrics-port needs prometheus_client: pip install 'conveyor[prometheus]' ({exc})"
        )) from None


def _add_metrics(queue: Queue, serve_at: tuple[str, int | None] | None) -> None:
    """Give the queue a Prometheus middleware if it has none; serve the metrics if asked."""
    prometheus = _prometheus()
    if not any(isinstance(mw, prometheus.PrometheusMiddleware) for mw in queue.middleware):
        queue.add_middleware(prometheus.PrometheusMiddleware())
    if serve_at is not None:
        host, port = serve_at
        served = prometheus.serve(port or 0, host)
        logging.getLogger("conveyor").info("serving metrics on http://%s:%d/metrics", host, served)


async def _reach_backend(queue: Queue, wk: Worker) -> bool:
    """Open the backend, waiting (with backoff) while it is unreachable; False if told to stop.

    A worker started before its Redis (a deploy, a compose file, a restart of both) waits for it
    instead of exiting; a stop signal meanwhile ends the wait.
    """
    log = logging.getLogger("conveyor")
    delay = 0.5
    while True:
        try:
            await queue.open()
            return True
        except BackendError as exc:
            log.warning("backend not reachable (%s); trying again in %.1f s", exc, delay)
        try:
            await asyncio.wait_for(wk.stopping.wait(), delay)
            return False
        except TimeoutError:
            delay = min(delay * 2, 5.0)


def _supervise(argv: list[str], processes: int, metrics: tuple[str, int] | None = None) -> int:
    """Run ``processes`` single-process workers; forward signals; restart one that crashes.

    A worker whose start-up failed is not restarted: the others are stopped and the exit code
    is :data:`STARTUP_FAILED`. With ``metrics`` the workers collect metrics into one directory
    and this process serves them, summed.
    """
    args = _without_processes(argv)
    log = logging.getLogger("conveyor.supervisor")
    stopping = False
    children: list[subprocess.Popen[bytes]] = []
    forget = None
    if metrics is not None:
        args.append("--metrics-collect")
        prometheus = _prometheus()
        host, port = metrics
        served = prometheus.serve(port, host)
        forget = prometheus.mark_process_dead
        log.info("serving the metrics of all worker processes on http://%s:%d/metrics", host, served)

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "conveyor", *args, "--processes", "1"])

    def forward(signum: int, _frame: object) -> None:
        # the first stop is forwarded as SIGUSR1, which a child never counts: a signal sent to
        # the whole group or unit (Ctrl-C, systemd, timeout) reaches the children directly too,
        # and two SIGTERMs would read as "exit now". A second stop here forwards SIGUSR2: exit now.
        nonlocal stopping
        again = stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGUSR2 if again else signal.SIGUSR1)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    children.extend(spawn() for _ in range(processes))
    if stopping:  # a stop came while they were starting, before `forward` could see them all
        for child in children:
            child.send_signal(signal.SIGUSR1)
    log.info("supervising %d worker processes: %s", processes, [c.pid for c in children])
    code = 0
    while children:
        time.sleep(0.1)
        for child in list(children):
            rc = child.poll()
            if rc is None:
                continue
            children.remove(child)
            if forget is not None:
                forget(child.pid)
            if rc == STARTUP_FAILED and not stopping:
                log.error("worker process %d did not start (see its error above): stopping the "
                          "others", child.pid)
                forward(signal.SIGTERM, None)
                code = STARTUP_FAILED
            elif stopping:
                code = max(code, _exit_code(rc))
            else:
                log.error("worker process %d exited with %d; starting another", child.pid, rc)
                time.sleep(0.5)
                if stopping:  # a stop came during the pause: start nothing more
                    continue
                fresh = spawn()
                children.append(fresh)
                if stopping:  # ...or while it was starting, before `forward` could see it
                    fresh.send_signal(signal.SIGUSR1)
    return code


def _exit_code(rc: int) -> int:
    """A child's exit status as a shell reports it: 128 + N for a death by signal N.

    A child stopped by the forwarded stop before it could install its handlers (it was still
    starting, so it ran nothing) counts as a clean exit.
    """
    if rc >= 0:
        return rc
    if -rc in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        return 0
    return 128 - rc


def _without_processes(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--processes", "-p", "--metrics-port", "--metrics-host"):
            skip = True
            continue
        if arg.startswith(("--processes=", "--metrics-port=", "--metrics-host=")):
            continue
        out.append(arg)
    return out


# -- looking at jobs -------------------------------------------------------------------------
def _run(target: str, fn: Callable[[Queue], Awaitable[T]]) -> T:
    try:
        queue = load_queue(target)
    except (ConveyorError, ImportError) as exc:
        raise _fail(exc) from None

    async def go() -> T:
        async with queue:
            return await fn(queue)

    try:
        return asyncio.run(go())
    except ConveyorError as exc:
        raise _fail(exc) from None


_STYLE = {"succeeded": "green", "failed": "red", "dead": "bold red", "cancelled": "yellow",
          "running": "cyan", "queued": "white", "scheduled": "blue"}


def _when(record: JobRecord) -> str:
    at = record.finished_at or record.started_at or record.enqueued_at
    return at.strftime("%Y-%m-%d %H:%M:%S")


@jobs_app.command("list")
def jobs_list(
    target: AppArg,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    task: Annotated[str | None, typer.Option(help="Only jobs of this task.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """List recent jobs, newest first."""
    records = _run(target, lambda q: q.list_jobs(status=status, task=task, limit=limit))
    table = Table(title=f"jobs ({len(records)})")
    for col in ("id", "task", "status", "attempts", "when", "error"):
        table.add_column(col)
    for r in records:
        err = f"{r.error['type']}: {r.error['message']}" if r.error else ""
        table.add_row(r.id, r.task, f"[{_STYLE.get(r.status.value, '')}]{r.status.value}[/]",
                      f"{r.attempts}/{r.max_attempts}", _when(r), err[:60])
    console.print(table)


@jobs_app.command("show")
def jobs_show(target: AppArg, job_id: str) -> None:
    """Print one job's full record as JSON (error traceback included)."""
    record = _run(target, lambda q: q.job(job_id).info())
    console.print_json(json.dumps(record.to_dict()))


@jobs_app.command("cancel")
def jobs_cancel(target: AppArg, job_id: str) -> None:
    """Cancel a job (a running one is stopped by its worker)."""
    status = _run(target, lambda q: q.job(job_id).cancel())
    console.print(f"{job_id}: {status.value}")


@jobs_app.command("retry")
def jobs_retry(target: AppArg, job_id: str) -> None:
    """Put a failed, dead or cancelled job back in its queue."""
    status = _run(target, lambda q: q.job(job_id).retry())
    console.print(f"{job_id}: {status.value}")


@app.command()
def stats(target: AppArg) -> None:
    """Count the queue's jobs by status."""
    counts = _run(target, lambda q: q.stats())
    table = Table(title="jobs by status")
    table.add_column("status")
    table.add_column("count", justify="right")
    for name, count in counts.items():
        table.add_row(f"[{_STYLE.get(name, '')}]{name}[/]", str(count))
    console.print(table)


@app.command()
def migrate(
    url: Annotated[str, typer.Argument(help="The backend URL, e.g. postgresql://host/db?schema=conveyor.")],
) -> None:
    """Create or upgrade the backend's schema (idempotent; safe while workers start).

    Every backend does this on first use too; running it at deploy time keeps the upgrade out
    of the workers' start.
    """
    from conveyor.backends import open_backend

    async def go() -> str:
        backend = open_backend(url)
        upgrade = getattr(backend, "migrate", None)
        if upgrade is not None:
            before, after = await upgrade()
            if before == after:
                return f"{backend.safe_url}: schema at version {after}, nothing to do"
            return f"{backend.safe_url}: schema migrated from version {before} to {after}"
        await backend.open()  # the engine creates or upgrades what it needs when it opens
        await backend.close()
        return f"{backend.safe_url}: ready"

    try:
        console.print(asyncio.run(go()))
    except ConveyorError as exc:
        raise _fail(exc) from None


def main() -> None:
    """Entry point of the ``conveyor`` script."""
    app()
