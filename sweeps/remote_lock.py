"""The driver lock of a sweep on an object store: a lock object, `driver.lock` in the sweep's bucket folder.

An object store has no flock, and pyarrow's S3 filesystem offers no conditional write, so this lock is a
lease: the holder's record (pid, host, command, start) is rewritten every HEARTBEAT_S seconds; a record
whose object was not rewritten for STALE_S seconds belongs to a driver that is gone. A record that names
this host and a pid that no longer runs is taken over at once (a `kill -9`ed driver, then `resume` on the same
machine). Two drivers starting within the same second on different hosts could both write their record:
each reads the object back after a pause and only the one whose record is there goes on, which narrows
that window to a write slower than the pause, not to nothing. On one host the local flock on the mirror's
driver.lock (sweeps/driver_lock.py) is held as well, which does exclude.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sweeps.storage import Remote, StorageError

LOCK_OBJECT = "driver.lock"
READ_BACK_S = 1.0


def acquire(remote: Remote, record: dict[str, Any], busy: Callable[[dict[str, Any], str], Exception],
            stale_s: float, alive: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:  # fmt: skip
    """Write our record unless a live driver's is there (raise busy(record, why)); the one found before."""
    previous, age = read(remote)
    if previous and not previous.get("ended") and age is not None and age < stale_s:
        mine = previous.get("host") == socket.gethostname()
        if not mine or alive(previous):
            raise busy(previous, f"its lock object in {remote.uri} was written {age:.0f} s ago")
    record["token"] = uuid.uuid4().hex
    write(remote, record)
    time.sleep(READ_BACK_S)
    found, _ = read(remote)
    if not found or found.get("token") != record["token"]:
        raise busy(found or {}, f"another driver wrote the lock object in {remote.uri} at the same moment")
    return previous


def read(remote: Remote) -> tuple[dict[str, Any] | None, float | None]:
    """The lock object's record and its age in seconds (None, None when there is none)."""
    import pyarrow.fs as pafs

    fs, base = remote.fs()
    key = f"{base}/{LOCK_OBJECT}"
    try:
        info = fs.get_file_info(key)
        if info.type == pafs.FileType.NotFound:
            return None, None
        with fs.open_input_stream(key) as src:
            record = json.loads(src.read().decode() or "null")
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"object storage: could not read the driver lock {key} on {remote.uri}: {exc}") from exc
    age = time.time() - info.mtime.timestamp() if info.mtime is not None else 0.0
    return (record if isinstance(record, dict) else None), age


def write(remote: Remote, record: dict[str, Any]) -> None:
    fs, base = remote.fs()
    key = f"{base}/{LOCK_OBJECT}"
    try:
        with fs.open_output_stream(key) as out:
            out.write(json.dumps(record).encode())
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"object storage: could not write the driver lock {key} on {remote.uri}: {exc}") from exc


def heartbeat(remote: Remote, record: dict[str, Any], stop: threading.Event, every_s: float) -> threading.Thread:
    """Rewrite the record every `every_s` seconds until `stop`; a failed beat is tried again at the next."""

    def beat() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(StorageError):
                write(remote, record)

    thread = threading.Thread(target=beat, daemon=True, name="driver-lock-object")
    thread.start()
    return thread


def holder(remote: Remote, stale_s: float, alive: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The record of a live driver of the sweep, or None."""
    try:
        record, age = read(remote)
    except StorageError:
        return None
    if not record or record.get("ended") or age is None or age >= stale_s:
        return None
    if record.get("host") == socket.gethostname() and not alive(record):
        return None
    return record
