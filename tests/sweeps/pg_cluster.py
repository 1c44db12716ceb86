"""A throwaway PostgreSQL cluster for tests of MLflow on a real database: initdb into a temporary folder,
`pg_ctl start` on a free 127.0.0.1 port, a database and a password user of the test's own; no system service
is used or touched. PostgreSQL refuses to run as root, so under root (CI) the cluster runs as the `postgres`
user that Debian's package creates (or `nobody`).

Skipped with the reason where PostgreSQL's server programs or the psycopg2 driver are missing, failed
instead under CI=1: .ci/run installs them, and a check CI must run is never skipped quietly there."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import free_port

PROGRAMS = ("initdb", "pg_ctl", "postgres")
SUPERUSER, SUPERUSER_PASSWORD = "postgres", "sweepboard-admin"


def server_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres of one installation: PATH first, then Debian's
    /usr/lib/postgresql/VERSION/bin (not on PATH there), newest version first."""
    candidates: list[Path] = []
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).resolve().parent)  # a symlink on PATH leads to its installation
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in versions), key=lambda p: _version(p.parent.name), reverse=True)
    for folder in candidates:
        if all((folder / program).is_file() for program in PROGRAMS):
            return folder
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def require_postgres() -> Path:
    """PostgreSQL's server programs and the psycopg2 driver MLflow needs for it; a skip (a failure in CI)
    naming what is missing otherwise."""
    missing = []
    bin_dir = server_bin_dir()
    if bin_dir is None:
        missing.append("PostgreSQL's server programs (initdb, pg_ctl, postgres: Debian package postgresql)")
    try:
        import psycopg2  # noqa: F401  # MLflow's driver for postgresql:// stores
    except ImportError:
        missing.append("the psycopg2 driver (pip install psycopg2-binary)")
    if missing:
        reason = "missing " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must install them to run the MLflow-on-PostgreSQL tests (see .ci/run)")
        pytest.skip(f"{reason} (CI installs them)")
    assert bin_dir is not None
    return bin_dir


@dataclass(frozen=True)
class Postgres:
    """A running cluster: where it listens and how to reach it as its superuser."""

    port: int
    log: Path  # the server's log: errors such as "deadlock detected" are written there

    def connect(self) -> Any:
        """A psycopg2 connection as the superuser, to the maintenance database."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, dbname="postgres", user=SUPERUSER,
                                      password=SUPERUSER_PASSWORD)  # fmt: skip
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        return connection

    def create_database(self, name: str, user: str, password: str) -> str:
        """A database owned by a new login user; returns its SQLAlchemy URI (MLflow's backend store URI). The
        driver is named: SQLAlchemy 2.1 takes a bare postgresql:// to mean psycopg 3, not psycopg2."""
        connection = self.connect()  # not `with connection`: psycopg2 would open a transaction block
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE ROLE {user} LOGIN PASSWORD %s", (password,))
                cursor.execute(f"CREATE DATABASE {name} OWNER {user}")
        finally:
            connection.close()
        return f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{self.port}/{name}"


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """Start a throwaway cluster and stop it (immediately: nothing of it is kept) afterwards."""
    bin_dir = require_postgres()
    as_user = _service_user()
    # Not under pytest's tmp_path: its root-only parent folder would shut the service user out.
    folder = Path(tempfile.mkdtemp(prefix="sweepboard-pg-"))
    data, log, password_file = folder / "data", folder / "server.log", folder / "superuser.pw"
    password_file.write_text(SUPERUSER_PASSWORD + "\n")
    if as_user is not None:
        os.chown(folder, as_user.pw_uid, as_user.pw_gid)
        os.chown(password_file, as_user.pw_uid, as_user.pw_gid)
    port, started = free_port(), False
    try:
        # Password (scram) over TCP, as MLflow connects; the unix socket only in the cluster's own folder, so
        # no system cluster's /var/run/postgresql is touched.
        _run(as_user, [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={password_file}",
                       "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
             log)  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
        _run(as_user, [str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(log),
                       "-o", options], log)  # fmt: skip
        started = True
        yield Postgres(port, log)
    finally:
        if started:
            subprocess.run(_as(as_user, [str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"]),
                           capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def _service_user() -> pwd.struct_passwd | None:
    """The user the cluster runs as: None (this one) unless this is root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


def _as(user: pwd.struct_passwd | None, command: list[str]) -> list[str]:
    return command if user is None else ["runuser", "-u", user.pw_name, "--", *command]


def _run(user: pwd.struct_passwd | None, command: list[str], log: Path) -> None:
    done = subprocess.run(_as(user, command), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        server_log = log.read_text()[-3000:] if log.is_file() else ""
        pytest.fail(f"{' '.join(command[:2])} failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                    f"{done.stderr[-2000:]}\n{server_log}")  # fmt: skip
