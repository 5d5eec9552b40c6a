"""A throwaway PostgreSQL cluster of our own (``initdb`` + ``pg_ctl``) on a free port, in a temp dir.

For tests that stop and restart the server (the chaos run): they must never touch the machine's
shared server. As root, ``initdb`` refuses to run, so the cluster's commands then run as the
``postgres`` system user (which owns the data directory); as anyone else, as that user.
Binaries come from ``$PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``, else ``PATH``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresCluster", "pg_bin"]


def pg_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, or None when PostgreSQL's server is not installed."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """One cluster in ``directory``: ``start()`` (initdb the first time), ``stop()``, ``crash()``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = port or _free_port()
        binary = pg_bin()
        if binary is None:
            raise RuntimeError("PostgreSQL's server (initdb, pg_ctl) is not installed")
        self.bin = binary
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")

    def url(self, database: str = "postgres", **options: str) -> str:
        """A ``postgresql://`` URL of this cluster (trust auth, user postgres)."""
        tail = "?" + "&".join(f"{k}={v}" for k, v in options.items()) if options else ""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}{tail}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = self._user

        def demote() -> None:
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
            preexec_fn=demote, cwd=self.directory,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n"
                               f"{self.log_tail()}")
        return done

    def _init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(self.directory, self._user.pw_uid, self._user.pw_gid)
            # the postgres user must be able to reach its directory (temp dirs are 0700): the
            # folders between the system's temp dir and it are opened for traversal, no more
            temp = Path(tempfile.gettempdir()).resolve()
            for folder in self.directory.resolve().parents:
                if folder == temp or temp not in folder.parents:
                    break
                mode = folder.stat().st_mode
                if not mode & 0o001:
                    folder.chmod(mode | 0o011)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-instructions")

    def start(self, timeout: float = 60.0) -> None:
        """Start the cluster (initdb first if needed) and wait until it accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            self._init()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories='{self.directory}' -c max_connections=200 "
            "-c shared_buffers=64MB -c fsync=on -c synchronous_commit=on"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(int(timeout)), "start")
        deadline = time.monotonic() + timeout
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not answer within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        done = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False)
        return done.returncode == 0

    def stop(self) -> None:
        """A clean shutdown (``pg_ctl stop -m fast``: sessions are ended, a checkpoint is written)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def crash(self) -> None:
        """Stop as a crash would (``-m immediate``: no checkpoint; the next start recovers from WAL)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def destroy(self) -> None:
        """Stop and delete the cluster."""
        self.crash()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server logged."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
