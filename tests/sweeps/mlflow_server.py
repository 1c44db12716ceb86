"""A real `mlflow server` process for tests about the tracking server: SQLite behind it, so it can be killed
(an outage) and started again on the same store, or a PostgreSQL database (tests/sweeps/pg_cluster.py). Each
start takes a port the OS picks then, so a restarted server never re-binds a port it released (someone else
may hold it by then); only a test about a server coming back at its own address asks for the same port, and a
collision there fails the start loudly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """`mlflow server` on a SQLite store, or on `backend_uri` with the artifacts served by the server from
    `folder/artifacts` (`--artifacts-destination`: clients upload and download through it, as in production).
    It can be killed and started again (on a new port, see start)."""

    def __init__(self, folder: Path, backend_uri: str | None = None, workers: int = 1) -> None:
        self.folder, self.port, self.backend_uri, self.workers = folder, free_port(), backend_uri, workers
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, same_port: bool = False) -> None:
        """Start it; after the first start on a fresh port (read `uri` again) unless `same_port`."""
        if self.starts and not same_port:
            self.port = free_port()
            self.uri = f"http://127.0.0.1:{self.port}"
        self.starts += 1
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        if self.backend_uri is None:
            store = ["--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
                     "--default-artifact-root", str(self.folder / "artifacts")]  # fmt: skip
        else:
            store = ["--backend-store-uri", self.backend_uri,
                     "--artifacts-destination", str(self.folder / "artifacts")]  # fmt: skip
        with (self.folder / "server.log").open("a") as log:
            self.process = subprocess.Popen(
                [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers), *store],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                answered = True
            except OSError:
                answered = False
            time.sleep(0.5)
            alive = self.process.poll() is None
            if answered and alive:  # it answered, and it is ours (another process there would end ours)
                return
            if not alive or time.monotonic() > deadline:
                output = (self.folder / "server.log").read_text()[-3000:]
                self.kill()
                pytest.fail(f"mlflow server did not start on port {self.port}:\n{output}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server and its workers (its own process group), at once by default: an outage."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
