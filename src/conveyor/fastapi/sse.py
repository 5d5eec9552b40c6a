"""A job's events as Server-Sent Events (``text/event-stream``).

Each event goes out as::

    id: 3
    event: progress
    data: {"job_id": "...", "seq": 3, "type": "progress", "at": "...", "data": {"fraction": 0.5, ...}}

``id`` is the event's per-job ``seq``, so a browser's ``EventSource`` that reconnects sends it back
as ``Last-Event-ID`` and the stream continues after it. The stream replays what happened before
the client connected, follows the job live with a keep-alive comment every ``heartbeat`` seconds
(which is also how a gone client is noticed), and ends after the terminal status event that
leaves the job finished (a job retried by hand has older ones in its history, and goes on).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from conveyor.job import Job
from conveyor.model import Event

__all__ = ["EventStreamResponse", "encode", "job_stream"]

#: how long a browser waits before reconnecting a dropped stream, in milliseconds
RECONNECT_MS = 1000
KEEPALIVE = b": keep-alive\n\n"


class EventStreamResponse(StreamingResponse):
    """A streaming response of media type ``text/event-stream``, uncached and unbuffered."""

    media_type = "text/event-stream"

    # FastAPI's OpenAPI generator reads this parameter's default for the documented status code
    def __init__(self, content: AsyncIterator[bytes], status_code: int = 200) -> None:
        super().__init__(
            content, status_code=status_code,
            # no caching; X-Accel-Buffering stops nginx from holding events back
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def encode(event: Event) -> bytes:
    """One job event in the SSE wire format (compact ASCII JSON never spans lines)."""
    # ASCII with escapes: a task's message may hold a lone surrogate, which UTF-8 cannot carry but
    # a JSON escape can (and JSON.parse takes); the stream must never break on one event
    data = json.dumps(event.to_dict(), separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


async def job_stream(job: Job[Any], after: int, heartbeat: float) -> AsyncIterator[bytes]:
    """The encoded events of a job with ``seq > after``, live, until its terminal event."""
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    async for event in job.follow(after, idle=heartbeat):
        yield KEEPALIVE if event is None else encode(event)
