"""CPU-heavy work: an image-compression-style job that would freeze the server, and doesn't.

``POST /images`` enqueues ``compress`` as a ``cpu=True`` task: it runs in a worker process, so
while it crunches, ``GET /health`` still answers in milliseconds.

``POST /images/blocking`` does the same work the way many apps first try: an ``async def`` passed
to ``BackgroundTasks``. It runs on the server's event loop after the response, and until it ends
*nothing else is served*: try ``curl localhost:8000/health`` right after it.

Run it::

    uvicorn cpu_work:app --app-dir examples
    curl -X POST localhost:8000/images -H 'content-type: application/json' -d '{"size": 4000}'
    curl -w ' %{time_total}s\\n' localhost:8000/health              # fast
    curl -X POST localhost:8000/images/blocking -H 'content-type: application/json' -d '{"size": 4000}'
    curl -w ' %{time_total}s\\n' localhost:8000/health              # waits for the whole job
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel, Field

from conveyor import Queue

queue = Queue()


def compress_pixels(size: int) -> dict[str, Any]:
    """Quantize and run-length encode a generated ``size`` x ``size`` grayscale image.

    Pure Python on purpose: it holds the interpreter the whole time, like real image code does
    between its C calls.
    """
    started = time.perf_counter()
    runs = 0
    previous = -1
    for y in range(size):
        for x in range(size):
            level = ((x // 16) ^ (y // 12)) % 8  # a blocky pattern in 8 grey levels
            if level != previous:
                runs += 1
                previous = level
    return {
        "pixels": size * size, "runs": runs, "ratio": round(size * size / max(runs, 1), 2),
        "seconds": round(time.perf_counter() - started, 3),
    }


@queue.task(cpu=True, timeout=120)
def compress(size: int) -> dict[str, Any]:
    """The compression, as a job in a worker process (``cpu=True``: a module-level ``def``)."""
    return compress_pixels(size)


app = FastAPI(title="cpu work", lifespan=queue.lifespan(worker=True, concurrency=4, cpu_workers=2))
# a local demo, open on purpose: guard a real one with dependencies=[...] (docs/fastapi.md)
app.include_router(queue.router(dashboard=True, public=True), prefix="/jobs")


class Image(BaseModel):
    """What to compress (a stand-in for an uploaded file's id)."""

    size: int = Field(default=4000, ge=1, le=10_000, description="side of the square image, in pixels")


@app.post("/images", status_code=202)
async def upload(image: Image) -> dict[str, str]:
    """Compress in a worker process: the server stays responsive."""
    job = await compress.enqueue(image.size)
    return {"job": job.id}


last_blocking: dict[str, Any] = {}


async def compress_on_the_loop(size: int) -> None:
    """The mistake, for contrast: CPU work in an ``async def`` background task."""
    last_blocking.update(compress_pixels(size))


@app.post("/images/blocking", status_code=202)
async def upload_blocking(image: Image, background: BackgroundTasks) -> dict[str, str]:
    """Compress with plain ``BackgroundTasks``: every other request waits until it is done."""
    background.add_task(compress_on_the_loop, image.size)
    return {"status": "compressing on the event loop: the server is frozen until it ends"}


@app.get("/health")
async def health() -> dict[str, bool]:
    """Liveness: the request that shows whether the event loop is free."""
    return {"ok": True}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, timeout_graceful_shutdown=5)
