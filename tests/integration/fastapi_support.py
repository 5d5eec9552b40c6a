"""Helpers for the FastAPI tests: an app under its lifespan, a live uvicorn server, an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI


@contextlib.asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in-process, with the app's lifespan running around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


@contextlib.asynccontextmanager
async def live_server(app: FastAPI, *, timeout: float = 10.0) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free local port, in this event loop; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if serving.done():
                serving.result()
                raise AssertionError("uvicorn stopped before it started")
            if time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not start within {timeout} s")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout)
        sock.close()


@dataclass
class SSE:
    """One parsed Server-Sent Event."""

    id: str | None = None
    event: str = "message"
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        """The data as JSON."""
        return json.loads(self.data)


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[SSE]:
    """Parse an ``text/event-stream`` body, line by line, into events (comments included)."""
    current = SSE()
    data: list[str] = []
    touched = False
    async for line in lines:
        if line == "":
            if touched:
                current.data = "\n".join(data)
                yield current
            current, data, touched = SSE(), [], False
            continue
        touched = True
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "":
            current.comments.append(value)
        elif name == "id":
            current.id = value
        elif name == "event":
            current.event = value
        elif name == "data":
            data.append(value)
        elif name == "retry":
            current.retry = int(value)
