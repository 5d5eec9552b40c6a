"""Progress to the browser: a long conversion whose progress the page follows over SSE.

``POST /conversions`` enqueues ``convert``, which reports its progress with ``ctx.progress()``.
The page at ``/`` starts a conversion and follows ``GET /jobs/{id}/events`` with the browser's
``EventSource``: a progress bar that moves as the job works, and the result at the end. Reload
the page mid-way (or lose the network) and it picks up where it was: ``EventSource`` reconnects
with ``Last-Event-ID``.

Run it::

    uvicorn progress:app --app-dir examples
    open http://localhost:8000/
    curl -N localhost:8000/jobs/<id>/events     # the raw stream
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from conveyor import Context, Queue

#: seconds per conversion step
STEP_SECONDS = float(os.environ.get("CONVERT_STEP_SECONDS", "0.3"))

queue = Queue()


@queue.task(timeout=600)
async def convert(name: str, steps: int, ctx: Context) -> dict[str, str]:
    """Convert a (pretend) video, one step at a time, telling watchers how far it got."""
    for step in range(1, steps + 1):
        await asyncio.sleep(STEP_SECONDS)  # the real work goes here
        await ctx.progress(step / steps, f"encoded segment {step} of {steps}")
    return {"name": name, "output": f"{name}.webm"}


app = FastAPI(title="progress", lifespan=queue.lifespan(worker=True))
# a local demo, open on purpose: guard a real one with dependencies=[...] (docs/fastapi.md)
app.include_router(queue.router(dashboard=True, public=True), prefix="/jobs")


class Conversion(BaseModel):
    """What to convert."""

    name: str = Field(default="holiday", min_length=1, max_length=100)
    steps: int = Field(default=10, ge=1, le=1000)


@app.post("/conversions", status_code=202)
async def start(conversion: Conversion) -> dict[str, str]:
    """Start a conversion; follow it at ``/jobs/{job}/events``."""
    job = await convert.enqueue(conversion.name, conversion.steps)
    return {"job": job.id, "events": f"/jobs/{job.id}/events"}


@app.get("/health")
async def health() -> dict[str, bool]:
    """Liveness."""
    return {"ok": True}


PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>conversion</title>
<style>
  body { font: 16px system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; }
  progress { width: 100%; height: 1.4rem; }
  #status { font-weight: 600; }
</style></head>
<body>
<h1>Convert a video</h1>
<button id="start">Start conversion</button>
<p>Status: <span id="status">idle</span></p>
<progress id="bar" max="1" value="0"></progress>
<p id="message"></p>
<p id="result"></p>
<script>
const $ = (id) => document.getElementById(id);
const FINAL = ["succeeded", "failed", "dead", "cancelled"];
$("start").addEventListener("click", async () => {
  $("start").disabled = true;
  const response = await fetch("/conversions", {
    method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({name: "holiday", steps: 10}),
  });
  const {job} = await response.json();
  follow(job);
});

function follow(jobId) {
  // replays what already happened, then live; reconnects with Last-Event-ID by itself
  const events = new EventSource("/jobs/" + jobId + "/events");
  events.addEventListener("progress", (message) => {
    const {data} = JSON.parse(message.data);
    $("bar").value = data.fraction;
    $("message").textContent = data.message;
  });
  events.addEventListener("status", async (message) => {
    const {data} = JSON.parse(message.data);
    $("status").textContent = data.status;
    if (!FINAL.includes(data.status)) return;
    const job = await (await fetch("/jobs/" + jobId)).json();
    if (!FINAL.includes(job.status)) return;  // an old verdict: the job was retried since
    events.close();  // finished: do not reconnect
    $("result").textContent = job.status === "succeeded"
      ? "done: " + job.result.output : "error: " + (job.error ? job.error.message : job.status);
    $("start").disabled = false;
  });
}
</script>
</body>
</html>
"""


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    """The page that starts a conversion and shows its progress live."""
    return PAGE


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, timeout_graceful_shutdown=5)
