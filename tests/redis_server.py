"""A throwaway ``redis-server`` for tests and benchmarks: own port, own directory, never shared.

Used by ``tests/conftest.py`` (one server per test session, a key prefix per test), by the Redis
integration tests (servers they kill and restart, with AOF) and by ``benchmarks/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

__all__ = ["RedisServer", "free_port", "redis_server_binary"]


def redis_server_binary() -> str | None:
    """The ``redis-server`` executable on PATH (or $REDIS_SERVER), or None."""
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, with its data in ``directory``.

    ``aof=True`` turns on the append-only file with ``appendfsync always``: every write the
    server acknowledged survives a SIGKILL, which is what the durability tests rely on.
    """

    def __init__(
        self, directory: Path, *, aof: bool = False, password: str | None = None,
        port: int | None = None,
    ) -> None:
        self.directory = directory
        self.aof = aof
        self.password = password
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, *, prefix: str | None = None, db: int = 0, **options: str) -> str:
        """The ``redis://`` URL of this server, with conveyor's ``prefix`` and other options."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        query = dict(options)
        if prefix is not None:
            query["prefix"] = prefix
        tail = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}{tail}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (on the same port as before, for a restart); wait until it answers."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--daemonize", "no", "--protected-mode", "no",
            "--appendonly", "yes" if self.aof else "no",
        ]
        if self.aof:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Stop the server abruptly (SIGKILL: no shutdown save) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server logged."""
        with contextlib.suppress(OSError):
            return "\n".join(
                (self.directory / "redis.log").read_text(errors="replace").splitlines()[-lines:]
            )
        return ""
