"""The app the browser tests look at: jobs in every state, one of them stepping on command.

``POST /seed`` enqueues a known set of jobs (and returns their ids); ``POST /step`` lets the
``convert`` job make one step of progress. Served by uvicorn as ``e2e.dashboard_app:app``.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from conveyor import Context, Queue, Retry

#: an argument and error message that would run script if the dashboard treated them as markup
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'

queue = Queue()
steps: asyncio.Queue[None] | None = None


def gate() -> asyncio.Queue[None]:
    """The queue of steps ``convert`` waits on (made on the server's event loop)."""
    global steps
    if steps is None:
        steps = asyncio.Queue()
    return steps


@queue.task
async def resize(path: str, width: int) -> dict[str, object]:
    """Succeeds at once."""
    return {"path": path, "width": width}


@queue.task(retries=Retry(attempts=2, backoff=0.01))
async def send_email(to: str) -> None:
    """Always fails: ends dead after two attempts."""
    raise ConnectionRefusedError(f"SMTP server refused the connection for {to}")


@queue.task
async def convert(name: str, total: int, ctx: Context) -> str:
    """Reports progress one step per ``POST /step``."""
    for step in range(1, total + 1):
        await gate().get()
        await ctx.progress(step / total, f"segment {step} of {total}")
    return f"{name}.webm"


@queue.task
async def nightly_report(day: str) -> None:
    """Enqueued with a long delay, so it waits (scheduled) until cancelled."""


# a short grace: the stepping job may still wait for a step when the test stops the server
app = FastAPI(lifespan=queue.lifespan(worker=True, grace=1))
# a local demo, open on purpose: guard a real one with dependencies=[...] (docs/fastapi.md)
app.include_router(queue.router(dashboard=True, public=True), prefix="/jobs")


@app.post("/seed")
async def seed() -> dict[str, str]:
    """Jobs in every state the dashboard shows."""
    for i in range(3):
        await resize.enqueue(f"/photos/{i}.jpg", 640)
    failed = await send_email.enqueue("ops@example.com")
    hostile = await send_email.enqueue(XSS)
    converting = await convert.enqueue("holiday", 4)
    waiting = await nightly_report.options(delay=3600).enqueue("2026-01-01")
    return {"failed": failed.id, "hostile": hostile.id, "converting": converting.id, "waiting": waiting.id}


@app.post("/step")
async def step() -> dict[str, int]:
    """Let ``convert`` make one step."""
    gate().put_nowait(None)
    return {"pending": gate().qsize()}


@app.get("/health")
async def health() -> dict[str, bool]:
    """Liveness."""
    return {"ok": True}
