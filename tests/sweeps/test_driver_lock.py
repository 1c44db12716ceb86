"""One driver per sweep (sweeps/driver_lock.py), with real processes: a live holder refuses a second
driver, naming it; a killed one's lock is taken over; another host's fresh record is believed even where
flock would let us in. The whole-sweep case (kill -9, two resumes at once) is in test_sweep_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep_e2e import sweep_env

from sweeps import driver_lock

HOLD = """
import sys, time
from pathlib import Path
from sweeps import driver_lock
with driver_lock.hold(Path(sys.argv[1]), "resume held"):
    print("held", flush=True)
    time.sleep(600)
"""


def start_holder(root: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True,
                            env=sweep_env(root))  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def sweep_folder(tmp_path: Path, name: str = "locked") -> Path:
    root = tmp_path / "runs" / "sweeps" / name
    root.mkdir(parents=True)
    (root / "sweepboard.json").write_text(json.dumps({"config": {}, "budget_usd": 1.0}))
    return root


def test_a_live_driver_refuses_a_second_resume_naming_its_pid_and_host(tmp_path: Path) -> None:
    root = sweep_folder(tmp_path)
    holder = start_holder(root)
    try:
        cmd = [sys.executable, "-m", "sweeps.cli", "resume", "locked"]
        done = subprocess.run(cmd, cwd=tmp_path, env=sweep_env(tmp_path), capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"pid {holder.pid} on host {socket.gethostname()}" in done.stderr
        assert "`sweepboard resume held` started 20" in done.stderr and "one driver per sweep" in done.stderr
        assert driver_lock.holder(root)["pid"] == holder.pid  # type: ignore[index]
        # sync neither: while a driver runs, it is the sweep's only MLflow writer.
        sync = subprocess.run([sys.executable, "-m", "sweeps.cli", "sync", "locked"], cwd=tmp_path,
                              env=sweep_env(tmp_path), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert sync.returncode == 2 and f"is running now (pid {holder.pid} on host" in sync.stderr, sync.stderr
        assert not (root / "budget.json").exists() and not any(root.glob("experiment_state*"))
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_drivers_lock_is_taken_over_and_a_clean_end_is_not(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = sweep_folder(tmp_path)
    holder = start_holder(root)
    os.kill(holder.pid, signal.SIGKILL)  # no chance to clean up: the kernel drops the flock
    holder.wait()
    assert driver_lock.holder(root) is None
    with driver_lock.hold(root, "resume locked") as record:
        assert record["pid"] == os.getpid()
        assert driver_lock.holder(root) == record  # held, and readable by others
        busy = pytest.raises(driver_lock.DriverBusy, match=f"pid {os.getpid()} on host")
        with busy, driver_lock.hold(root, "resume locked"):  # another open file description: refused too
            pass
    err = capfd.readouterr().err
    assert f"taking over sweep 'locked' from a driver that is gone (pid {holder.pid} on host" in err
    assert driver_lock.read(root / driver_lock.LOCK_FILE)["ended"]  # type: ignore[index]
    with driver_lock.hold(root, "resume locked"):  # after a clean end: no takeover message
        pass
    assert "taking over" not in capfd.readouterr().err


def test_another_hosts_fresh_record_is_refused_even_where_flock_lets_us_in(tmp_path: Path) -> None:
    root = sweep_folder(tmp_path)
    path = root / driver_lock.LOCK_FILE
    other = {"pid": 4242, "host": "gpu-node-7", "command": "resume locked", "started": "2026-01-01T00:00:00"}
    path.write_text(json.dumps(other))  # as a driver on another host writes it over NFS, no flock seen here
    busy = pytest.raises(driver_lock.DriverBusy, match="pid 4242 on host gpu-node-7.*touched 0 s ago")
    with busy, driver_lock.hold(root, "resume locked"):
        pass
    assert json.loads(path.read_text()) == other  # a refused driver writes nothing
    stale = time.time() - driver_lock.STALE_S - 5
    os.utime(path, (stale, stale))  # that host stopped beating: its driver is gone
    with driver_lock.hold(root, "resume locked") as record:
        assert record["host"] == socket.gethostname()
