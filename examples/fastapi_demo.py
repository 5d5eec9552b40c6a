"""conveyor with FastAPI, live: the welcome-email app, served, driven for you, on an embedded SQLite file.

    make demo            # or: .venv/bin/python examples/fastapi_demo.py

It starts ``examples/welcome_email.py`` under uvicorn with the worker inside the app, prints the
dashboard's URL, and then plays a newcomer's first minutes: the mail server goes down, five people
sign up, their welcome emails fail and are retried with backoff until the server is back, and one
address is rejected for good, so its job ends ``dead`` with its traceback on the dashboard.
Then it keeps serving for ``$DEMO_SECONDS`` (default 30) so you can look around, and exits by
itself (Ctrl-C stops it at any time). The jobs and users live in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

# piped output (CI, `| tee`) gets a wide console so the story lines and bars do not wrap
console = Console(highlight=False, width=None if sys.stdout.isatty() else 130)

USERS = [
    ("ada@example.com", "Ada"),
    ("grace@example.com", "Grace"),
    ("linus@example.com", "Linus"),
    ("barbara@example.com", "Barbara"),
    ("nobody@bounce.example", "Nobody"),
]
TERMINAL = {"succeeded", "failed", "dead", "cancelled"}
HERE = os.path.dirname(os.path.abspath(__file__))


def pick_port(preferred: int) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


def say(text: str = "") -> None:
    """Print a line of the demo's story."""
    console.print(text, markup=False, soft_wrap=True)


async def drive(base: str, linger: float) -> None:
    """Play the scenario against the running app, then wait ``linger`` seconds."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        say("1. The mail server goes down: its next 4 connections are refused.")
        await client.post("/mail-server/outage", params={"failures": 4})
        say("2. Five people sign up (POST /users); each response comes back at once:")
        jobs: dict[str, str] = {}
        for email, name in USERS:
            response = await client.post("/users", json={"email": email, "name": name})
            response.raise_for_status()
            jobs[email] = response.json()["welcome_job"]
            say(f"     201  {email:<24} welcome job {jobs[email]}")
        say("3. The worker sends the emails; failures are retried with backoff.")
        say("   Each bar follows its job's Server-Sent Events (GET /jobs/{id}/events):")
        await follow_all(base, jobs)
        records = await watch(client, jobs)
        say("4. Outcome (GET /jobs/{id}):")
        for email, record in records.items():
            error = record["error"]
            why = f"  last error: {error['type']}: {error['message']}" if error else ""
            say(f"     {record['status']:<10} {email:<24} after {record['attempts']} attempt(s){why}")
        say()
        say(f"Open the dashboard: {base}/jobs/ui   (API docs: {base}/docs)")
        say("The dead job is there with its traceback; its Retry button puts it back in the queue.")
        if linger > 0:
            say(f"Serving for {linger:.0f} more seconds; press Ctrl-C to stop now.")
            await asyncio.sleep(linger)


async def follow_all(base: str, jobs: dict[str, str]) -> None:
    """One progress bar per job, fed by its event stream, until every job has finished."""
    columns = (
        TextColumn("     {task.fields[email]:<24}"), BarColumn(bar_width=24),
        TextColumn("{task.fields[status]:<10} {task.description}"),
    )
    with Progress(*columns, console=console, transient=False) as bars:
        async with httpx.AsyncClient(base_url=base, timeout=None) as client:
            await asyncio.wait_for(asyncio.gather(*(
                follow(client, bars, email, job_id) for email, job_id in jobs.items()
            )), timeout=40)


async def follow(client: httpx.AsyncClient, bars: Progress, email: str, job_id: str) -> None:
    """Move one bar with the job's status and progress events, replayed from its start."""
    bar = bars.add_task("", total=1.0, email=email, status="queued")
    async with client.stream("GET", f"/jobs/{job_id}/events") as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            data = event["data"]
            if event["type"] == "progress":
                bars.update(bar, completed=data["fraction"], description=data["message"])
                continue
            status = data["status"]
            note = ""
            if data.get("error"):
                note = f"{data['error']['type'].rsplit('.', 1)[-1]}: {data['error']['message']}"[:60]
            elif status == "running":
                note = f"attempt {data['attempt']}"
            bars.update(bar, status=status, description=note,
                        completed=1.0 if status == "succeeded" else None)


async def watch(client: httpx.AsyncClient, jobs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Print the queue's counts as they change until every job has finished; return the records."""
    deadline = time.monotonic() + 40
    last = ""
    while True:
        stats = (await client.get("/jobs/stats")).json()["counts"]
        line = "  ".join(f"{k} {v}" for k, v in stats.items() if v)
        if line != last:
            say(f"     {line}")
            last = line
        records = {email: (await client.get(f"/jobs/{job_id}")).json() for email, job_id in jobs.items()}
        if all(r["status"] in TERMINAL for r in records.values()):
            return records
        if time.monotonic() > deadline:
            raise RuntimeError("the demo's jobs did not finish within 40 s")
        await asyncio.sleep(0.25)


async def main() -> int:
    """Serve the app and drive it; return the exit code."""
    linger = float(os.environ.get("DEMO_SECONDS", "30"))
    # the worker logs every failure (with its traceback once a job is dead): nothing is swallowed
    logging.basicConfig(level=logging.WARNING, format="     [%(name)s] %(message)s", stream=sys.stdout)
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-fastapi-demo-"))
    os.environ["CONVEYOR_URL"] = f"sqlite:///{workdir / 'conveyor.db'}"
    os.environ["USERS_DB"] = str(workdir / "users.db")
    try:
        # imported only now: the example reads its database paths from the environment
        sys.path.insert(0, HERE)
        import welcome_email

        port = pick_port(int(os.environ.get("DEMO_PORT", "8000")))
        config = uvicorn.Config(
            welcome_email.app, host="127.0.0.1", port=port, log_level="warning",
            timeout_graceful_shutdown=3,
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
                return 1
            await asyncio.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        say(f"conveyor + FastAPI demo: {base}  (jobs in {workdir / 'conveyor.db'})")
        say(f"Dashboard: {base}/jobs/ui")
        say()
        driver = asyncio.create_task(drive(base, linger))
        done, _ = await asyncio.wait({serving, driver}, return_when=asyncio.FIRST_COMPLETED)
        if driver in done:
            server.should_exit = True
            await serving
            driver.result()
        else:  # the server stopped first: Ctrl-C
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
        say("Stopped: the worker drained and the app shut down cleanly.")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on once it has shut down
        say("Stopped: the worker drained and the app shut down cleanly.")
        code = 0
    sys.exit(code)
