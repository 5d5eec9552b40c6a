"""conveyor, live: a few kinds of jobs on an embedded SQLite file, run by an in-process worker.

    make demo                 # or: .venv/bin/python examples/demo.py

What it shows, top to bottom of the table it draws:

* ``fetch``: ``async def`` I/O-like work; many share the worker's event loop. Reports progress.
* ``thumbnail``: a plain ``def`` that blocks (``time.sleep``); it runs in the worker's thread pool.
* ``count_primes``: ``cpu=True``, defined at module level; it runs in a child process.
* ``record_goal``: ``key="match:{match_id}"``: the goals of one match are stored one at a time, in
  the order they were enqueued, although each takes a random time and the worker runs 8 jobs at once.
* ``flaky_webhook``: fails twice, then succeeds on its third attempt (``Retry(attempts=3)``).
* ``import_csv``: fails on every attempt and ends ``dead``, with its error and traceback stored.

Nothing to install: the jobs live in a temporary SQLite file that is removed at the end
(``--keep`` keeps it). Exits non-zero if any job did not end the way the demo expects.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from conveyor import Context, Job, JobRecord, Queue, Retry

# A plain path, nothing created at import: the cpu=True task's child process imports this module
# again to find count_primes, and must not touch the database.
DB = Path(tempfile.gettempdir()) / f"conveyor-demo-{os.getpid()}.db"

queue = Queue(f"sqlite:///{DB}")


@queue.task
async def fetch(url: str, ctx: Context) -> int:
    """Download a page (pretend): awaits between chunks, so many run on one event loop."""
    size = 0
    for chunk in range(1, 6):
        await asyncio.sleep(random.uniform(0.2, 0.5))
        size += random.randint(20_000, 90_000)
        await ctx.progress(chunk / 5, f"{size // 1024} KiB")
    return size


@queue.task
def thumbnail(image: str, ctx: Context) -> str:
    """Resize an image (pretend) with blocking calls: a plain def runs in a worker thread."""
    for step in range(1, 5):
        time.sleep(0.4)
        ctx.progress(step / 4, f"pass {step}/4")
    return image.rsplit(".", 1)[0] + ".thumb.jpg"


@queue.task(cpu=True)
def count_primes(limit: int, ctx: Context) -> int:
    """Count primes below ``limit`` by trial division: pure CPU, so it runs in a child process."""
    found, report_every = 0, max(1, limit // 10)
    for n in range(2, limit):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            found += 1
        if n % report_every == 0:
            ctx.progress(n / limit, f"{found} primes so far")
    return found


@queue.task(key="match:{match_id}")
async def record_goal(match_id: int, minute: int) -> str:
    """Store a goal. The key makes one match's goals run one at a time, in enqueue order."""
    await asyncio.sleep(random.uniform(0.1, 0.6))
    return f"goal at {minute}'"


@queue.task(retries=Retry(attempts=3, backoff=0.5, jitter=False))
async def flaky_webhook(endpoint: str, ctx: Context) -> str:
    """Call a webhook that answers 503 twice before it works."""
    await asyncio.sleep(0.3)
    if ctx.attempt < 3:
        raise ConnectionError(f"{endpoint} answered 503 Service Unavailable")
    return f"delivered on attempt {ctx.attempt}"


@queue.task(retries=Retry(attempts=2, backoff=0.5, jitter=False))
async def import_csv(path: str) -> int:
    """Import a file that is broken: every attempt fails, so the job ends dead."""
    await asyncio.sleep(0.3)
    raise ValueError(f"{path}: line 3 has 7 fields, expected 5")


# -- what the demo enqueues, and how each job should end --------------------------------------
GOALS = {7: [12, 31, 58, 77], 9: [4, 45, 90]}


async def enqueue_all() -> list[tuple[Job[Any], str, int | None]]:
    """Enqueue the demo's jobs; return (job, expected status, expected attempts or None)."""
    jobs: list[tuple[Job[Any], str, int | None]] = []
    for url in ("https://example.com/a", "https://example.com/b", "https://example.com/c"):
        jobs.append((await fetch.enqueue(url), "succeeded", 1))
    jobs.append((await thumbnail.enqueue("holiday.png"), "succeeded", 1))
    jobs.append((await count_primes.enqueue(600_000), "succeeded", 1))
    # interleave the two matches, one batch: same-key jobs keep this order, different keys overlap
    calls = []
    for i in range(max(len(minutes) for minutes in GOALS.values())):
        for match, minutes in GOALS.items():
            if i < len(minutes):
                calls.append(record_goal.prepare(match, minutes[i]))
    jobs.extend((job, "succeeded", 1) for job in await queue.enqueue_many(calls))
    jobs.append((await flaky_webhook.enqueue("https://hooks.example.com/orders"), "succeeded", 3))
    jobs.append((await import_csv.enqueue("customers.csv"), "dead", 2))
    return jobs


# -- drawing -------------------------------------------------------------------------------------
STYLE = {"queued": "white", "scheduled": "blue", "running": "cyan", "succeeded": "green",
         "failed": "red", "dead": "bold red", "cancelled": "yellow"}


def call_text(rec: JobRecord) -> str:
    parts = [repr(a) for a in rec.args] + [f"{k}={v!r}" for k, v in rec.kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= 34 else text[:33] + "…"


def outcome(rec: JobRecord) -> str:
    if rec.error and rec.status.value != "succeeded":
        return f"{rec.error['type']}: {rec.error['message']}"
    if rec.status.value == "succeeded":
        return f"→ {rec.result!r}"
    if rec.progress:
        return rec.progress["message"]
    return ""


def jobs_table(records: list[JobRecord], started: float) -> Table:
    table = Table(title=f"jobs on {DB.name}  ·  {time.monotonic() - started:4.1f} s",
                  title_justify="left", expand=True)
    table.add_column("job", style="dim", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("arguments", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("try", justify="right", no_wrap=True)
    table.add_column("progress", width=22, no_wrap=True)
    table.add_column("", ratio=1, no_wrap=True, overflow="ellipsis")
    for rec in records:
        status = rec.status.value
        fraction = 1.0 if status == "succeeded" else (rec.progress or {}).get("fraction", 0.0)
        bar = ProgressBar(total=1.0, completed=fraction, width=22,
                          complete_style="green" if status == "succeeded" else "cyan")
        table.add_row(rec.id[-8:], rec.task, call_text(rec), Text(status, style=STYLE[status]),
                      f"{rec.attempts}/{rec.max_attempts}", bar, outcome(rec))
    return table


def event_line(event: Any) -> Text:
    at = event.at.astimezone().strftime("%H:%M:%S.%f")[:-3]
    data = dict(event.data)
    if event.type == "progress":
        body = f"progress {data['fraction']:.0%} {data['message']}"
        return Text(f"{at}  {body}", style="dim")
    status = data.pop("status")
    extra = ""
    if "error" in data:
        extra = f"  ({data['error']['type']}: {data['error']['message']})"
    return Text.assemble(f"{at}  ", (status, STYLE.get(status, "")),
                         f"  attempt {data.get('attempt', '?')}{extra}")


async def watch_events(job: Job[Any], lines: list[Text]) -> None:
    """Follow one job's event stream (what the REST API serves as Server-Sent Events)."""
    async for event in job.events():
        lines.append(event_line(event))


async def main() -> int:
    console = Console()
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    console.rule("[bold]conveyor demo")
    console.print(f"queue on [bold]sqlite:///{DB}[/] · in-process worker, concurrency 8\n")
    ok = True
    async with queue:
        jobs = await enqueue_all()
        handles = [job for job, _, _ in jobs]
        watched = handles[-2]  # flaky_webhook: its events show the retries
        event_lines: list[Text] = []
        started = time.monotonic()

        def render(records: list[JobRecord]) -> Group:
            events = Panel(Text("\n").join(event_lines[-8:]) or Text("waiting…", style="dim"),
                           title=f"job.events() of {watched.id[-8:]} (flaky_webhook)",
                           title_align="left")
            return Group(jobs_table(records, started), events)

        async with queue.worker(concurrency=8):
            watcher = asyncio.create_task(watch_events(watched, event_lines))
            records = [await job.info() for job in handles]
            with Live(render(records), console=console, refresh_per_second=12) as live:
                while True:
                    records = list(await asyncio.gather(*(job.info() for job in handles)))
                    live.update(render(records))
                    if all(rec.status.terminal for rec in records) and watcher.done():
                        break
                    if time.monotonic() - started > 45:
                        console.print("[red]the demo took longer than 45 s; stopping")
                        ok = False
                        break
                    await asyncio.sleep(0.08)
            watcher.cancel()
        ok = summary(console, jobs, records) and ok
    return 0 if ok else 1


def took(rec: JobRecord) -> str:
    if rec.finished_at is None:
        return "-"
    return f"{(rec.finished_at - rec.enqueued_at).total_seconds():.2f} s"


def summary(console: Console, jobs: list[tuple[Job[Any], str, int | None]],
            records: list[JobRecord]) -> bool:
    table = Table(title="summary", title_justify="left", expand=True)
    for col in ("task", "arguments", "status", "attempts", "enqueue → done", "result / error", "as expected"):
        table.add_column(col, overflow="fold")
    problems: list[str] = []
    for (_, want_status, want_attempts), rec in zip(jobs, records, strict=True):
        good = rec.status.value == want_status and want_attempts in (None, rec.attempts)
        if not good:
            problems.append(f"{rec.task}({call_text(rec)}): {rec.status.value} after "
                            f"{rec.attempts} attempt(s), expected {want_status} after {want_attempts}")
        table.add_row(rec.task, call_text(rec), Text(rec.status.value, style=STYLE[rec.status.value]),
                      str(rec.attempts), took(rec), outcome(rec)[:70],
                      Text("yes", "green") if good else Text("NO", "bold red"))
    console.print(table)

    # lanes: read the start times back from the store, as any process could
    for match, minutes in GOALS.items():
        lane = sorted((r for r in records if r.task == "record_goal" and r.args[0] == match),
                      key=lambda r: r.started_at or datetime.max.replace(tzinfo=UTC))
        order = [r.args[1] for r in lane]
        spans = [(r.started_at, r.finished_at) for r in lane]
        one_at_a_time = all(a[1] is not None and b[0] is not None and a[1] <= b[0]
                            for a, b in itertools.pairwise(spans))
        in_order = order == minutes
        mark = "[green]✓[/]" if in_order and one_at_a_time else "[bold red]✗[/]"
        console.print(f"{mark} lane match:{match}: goals stored in order {order} "
                      f"(enqueued {minutes}), {'one at a time' if one_at_a_time else 'OVERLAPPING'}")
        if not (in_order and one_at_a_time):
            problems.append(f"lane match:{match} ran {order}, overlapping={not one_at_a_time}")

    if problems:
        console.print("[bold red]not as expected:[/]")
        for p in problems:
            console.print(f"  • {p}")
        return False
    console.print("[bold green]✓ every job ended as expected[/] "
                  "(the dead job keeps its error and traceback: `job.info().error`)")
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file afterwards")
    keep = parser.parse_args().keep
    try:
        code = asyncio.run(main())
    finally:
        if keep:
            print(f"kept the database: {DB}")
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{DB}{suffix}").unlink(missing_ok=True)
    sys.exit(code)
