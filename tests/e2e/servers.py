"""Start an ASGI app under uvicorn in a child process on a free port, and stop it gracefully."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
E2E = Path(__file__).resolve().parent

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running uvicorn child: its base URL, process, and output file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """Ctrl-C the server (SIGINT), wait for it to exit; return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(
                    f"server did not stop within {timeout} s of SIGINT:\n{self.output()}"
                ) from None
        return self.process.returncode


def wait_ready(server: Server, path: str, timeout: float) -> None:
    """Poll ``GET path`` until it answers 200, failing early if the process exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.output()}")
        try:
            response = httpx.get(server.url + path, timeout=2)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"server not ready within {timeout} s (last: {last!r}):\n{server.output()}")


@contextlib.contextmanager
def serve(
    app: str, *, app_dir: Path, workdir: Path, env: Mapping[str, str] | None = None,
    ready: str = "/health", timeout: float = 30.0,
) -> Iterator[Server]:
    """Run ``uvicorn app`` (``module:attr`` in ``app_dir``) in ``workdir``; stop it afterwards.

    The jobs go to a fresh SQLite file in ``workdir`` unless ``env`` sets ``CONVEYOR_URL``.
    """
    port = free_port()
    environ = {
        **os.environ, "PYTHONUNBUFFERED": "1",
        "CONVEYOR_URL": f"sqlite:///{workdir / 'conveyor.db'}", **(env or {}),
    }
    log = workdir / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir), "--host", "127.0.0.1",
             "--port", str(port), "--timeout-graceful-shutdown", "5"],
            cwd=workdir, env=environ, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(server, ready, timeout)
        yield server
    finally:
        if process.poll() is None:
            server.stop()


def read_sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse a ``text/event-stream`` body into events: ``{"id", "event", "data"}`` (comments dropped)."""
    event: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in event:
                yield event
            event = {}
            continue
        name, _, value = line.partition(":")
        if name:
            value = value[1:] if value.startswith(" ") else value
            event[name] = event[name] + "\n" + value if name == "data" and "data" in event else value


def poll(fetch: Callable[[], T | None], timeout: float, message: str, interval: float = 0.05) -> T:
    """Call ``fetch`` until it returns something truthy, and return it; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {message} (last: {value!r})")
        time.sleep(interval)
