"""A real `mlflow server` process for tests about the tracking server: SQLite behind it, one port for its
life, so it can be killed (an outage) and started again on the same store."""

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
    """`mlflow server` on a SQLite store, on one port for its life: it can be killed and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        with (self.folder / "server.log").open("a") as log:
            self.process = subprocess.Popen(
                [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
                 "--default-artifact-root", str(self.folder / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    output = (self.folder / "server.log").read_text()[-3000:]
                    self.kill()
                    pytest.fail(f"mlflow server did not start:\n{output}")
                time.sleep(0.5)

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
