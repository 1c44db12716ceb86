"""One live driver per sweep: `sweep` and `resume` hold runs/sweeps/NAME/driver.lock while they run.

The lock is an fcntl.flock on that file, held by an open descriptor for the driver's whole life: the kernel
drops it when the process ends in any way, `kill -9` included, so a dead driver never leaves a stale lock
behind and the next `resume` takes over (and says whose lock it took). The file's content is a JSON record
of the holder (pid, host, start time, command) for the refusal message; the holder touches the file every
HEARTBEAT_S seconds.

Shared filesystems: flock on NFS is emulated with POSIX locks on Linux (NFSv4 and NLM carry it between
hosts), but some mounts (`local_lock=flock|all`, `nolock`, several FUSE and object-store filesystems) keep
it local to each host, so two hosts could both "hold" it. So the record is trusted too: a record that
names another host is refused while its heartbeat is fresh (touched within STALE_S), even when flock
itself succeeded, and taken over only once that host's driver has stopped touching it. The file's mtime
is compared with this host's clock: hosts whose clocks disagree by more than STALE_S should not share a
sweep folder.

On an object store (storage: s3://...) the sweep's folder here is its node-local mirror (sweeps/storage.py):
the flock there is held as before, and a lock object in the bucket (sweeps/remote_lock.py) stands for it
between hosts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sweeps import remote_lock, storage

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0  # a record from another host untouched this long belongs to a driver that is gone


class DriverBusy(ValueError):
    """Another driver runs this sweep (a ValueError: the CLI exits 2, before anything is spent)."""


def hold(root: Path, command: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """Hold the sweep's driver lock for the `with` block (and at most the life of this process)."""
    return _hold(Path(root), command)


@contextlib.contextmanager
def _hold(root: Path, command: str) -> Iterator[dict[str, Any]]:
    path = root / LOCK_FILE
    file = open(path, "a+", encoding="utf-8")  # noqa: SIM115  held open for the lock's life; O_CLOEXEC
    stop = threading.Event()
    record: dict[str, Any] | None = None
    try:
        previous = acquire(file, path, root.name)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": _now()}
        remote = _remote(root)
        if remote is not None:  # refused: the holder's lock object and this file are left as they are
            try:
                previous = remote_lock.acquire(remote, mine, lambda r, why: DriverBusy(refusal(root.name, r, why)),
                                               STALE_S, _may_be_alive) or previous  # fmt: skip
            except BaseException:
                fcntl.flock(file.fileno(), fcntl.LOCK_UN)
                raise
            remote_lock.heartbeat(remote, mine, stop, HEARTBEAT_S)
        record = mine
        _write(file, record)
        if previous and not previous.get("ended"):
            print(f"sweepboard: taking over sweep {root.name!r} from a driver that is gone ({describe(previous)})",
                  file=sys.stderr, flush=True)  # fmt: skip
        threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name="driver-lock").start()
        yield record
    finally:
        stop.set()
        if record is not None:  # ended (done, Ctrl-C, a crash): only a killed driver leaves no end
            with contextlib.suppress(OSError):
                _write(file, {**record, "ended": _now()})
            remote = _remote(root)
            if remote is not None:
                with contextlib.suppress(OSError, remote_lock.StorageError):
                    remote_lock.write(remote, {**record, "ended": _now()})
        file.close()  # releases the flock


def acquire(file: IO[str], path: Path, name: str) -> dict[str, Any] | None:
    """Take the lock on `file` or raise DriverBusy naming its holder; the record found before, if any."""
    for attempt in range(5):
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 4:  # a driver holds it for its life; a moment's hold is holder() looking
                raise DriverBusy(refusal(name, _holder_after_race(path))) from None
            time.sleep(0.1)
    previous = read(path)
    if previous and not previous.get("ended") and previous.get("host") != socket.gethostname():
        age = time.time() - path.stat().st_mtime
        if age < STALE_S:  # flock may be local to each host here: believe the other host's heartbeat
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
            raise DriverBusy(refusal(name, previous, f"its lock file was touched {age:.0f} s ago"))
    return previous


def holder(root: Path) -> dict[str, Any] | None:
    """The record of the driver running the sweep at `root` now, or None when none is (the lock is free)."""
    path = Path(root) / LOCK_FILE
    remote = _remote(Path(root))
    if remote is not None and (found := remote_lock.holder(remote, STALE_S, _may_be_alive)) is not None:
        return found
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read(path) or {}
    return None


def read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "pid unknown"
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, `sweepboard "
            f"{record.get('command', '?')}` started {record.get('started', '?')}")  # fmt: skip


def refusal(name: str, record: dict[str, Any] | None, why: str = "") -> str:
    extra = f"; {why}" if why else ""
    return (f"sweep {name!r} is being run by another driver ({describe(record)}{extra}): one driver per "
            f"sweep. Wait for it to end, or stop it (Ctrl-C, or kill that pid) and run `sweepboard resume "
            f"{name}` again")  # fmt: skip


def _holder_after_race(path: Path) -> dict[str, Any] | None:
    """The holder's record. A driver that has just taken the lock writes its record right after: until
    then the file may still name the driver before it, which ended. Wait a moment for the new one."""
    record = read(path)
    for _ in range(20):
        if record and not record.get("ended") and _may_be_alive(record):
            break
        time.sleep(0.1)
        record = read(path)
    return record


def _may_be_alive(record: dict[str, Any]) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # another host's pid cannot be checked from here
    try:
        os.kill(int(record.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def _remote(root: Path) -> remote_lock.Remote | None:
    found = storage.remote_of(root)
    return found[0] if found is not None else None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write(file: IO[str], record: dict[str, Any]) -> None:
    file.seek(0)
    file.truncate()
    file.write(json.dumps(record))
    file.flush()
    os.fsync(file.fileno())


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(path)
