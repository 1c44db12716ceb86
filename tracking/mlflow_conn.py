"""Where MLflow is and whether it answers: the tracking URI, retries of transient errors, and the fast failure
that keeps a sweep from stalling on a tracking server that is gone.

When a tracking server stops answering, a call fails with TrackingUnavailable after its retries, and later
calls to that server fail at once (after a 2 s health probe) until it answers again. No ray import.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
T = TypeVar("T")

# Pauses between attempts. SQLite already waits 20 s (MLflow's busy_timeout) before "database is locked",
# and MLflow's HTTP client retries connections itself, so a few extra attempts are enough.
RETRY_DELAYS = (1.0, 2.0, 4.0)
# Error texts of a tracking server that does not answer (MLflow wraps requests' errors in MlflowException).
_UNREACHABLE = ("connection refused", "connectionerror", "max retries exceeded", "failed to establish",
                "connection reset", "connection aborted", "remote end closed", "timed out",
                "timeout exception", "temporarily unavailable", "error code 502", "error code 503",
                "error code 504")
_TRANSIENT = ("database is locked", "database table is locked", *_UNREACHABLE)
HEALTH_TIMEOUT_S = 2.0
_DOWN: dict[str, float] = {}  # tracking URI -> when a call last found it unreachable (time.monotonic)
_FAIL_FAST: ContextVar[bool] = ContextVar("sweepboard_mlflow_fail_fast", default=False)


class TrackingUnavailable(MlflowException):
    """The tracking server does not answer (refused, timed out, 502-504): nothing was logged."""

    def __init__(self, uri: str, what: str, cause: str) -> None:
        super().__init__(f"MLflow at {uri} cannot be reached ({what}: {cause})")
        self.uri = uri


def tracking_uri(explicit: str | None = None) -> str:
    """The URI to log to: `explicit`, else MLFLOW_TRACKING_URI, else ./mlflow.db as an absolute path.

    Relative SQLite paths are made absolute so that the driver and every Ray worker mean the same file.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and uri[len(prefix):] != ":memory:":
        uri = prefix + str(Path.cwd() / uri[len(prefix):])
    return uri


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Raise ValueError naming `uri` and the fix when nothing could be logged there."""
    if is_remote(uri):
        problem = _health(uri, timeout_s)
        if problem:
            raise ValueError(
                f"tracking URI {uri}: no MLflow server answers ({problem}); start one "
                "(mlflow server --host 127.0.0.1 --port 5000) or set --tracking-uri / MLFLOW_TRACKING_URI"
            )
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])  # the database file
    elif uri.startswith("file://") or "://" not in uri:
        path = Path(uri.removeprefix("file://"))  # a folder store
    else:
        return  # another database or a hosted service: MLflow reports its own errors
    fix = "or point --tracking-uri / MLFLOW_TRACKING_URI elsewhere"
    # MLflow creates the file (or folder) itself, but not the folder it lies in.
    if not path.parent.is_dir():
        raise ValueError(f"tracking URI {uri}: folder {path.parent} does not exist; create it {fix}")
    writable = path if path.exists() else path.parent
    if not os.access(writable, os.W_OK):
        raise ValueError(f"tracking URI {uri}: {writable} is not writable; fix its permissions {fix}")


def retry(call: Callable[[], T], what: str, client: MlflowClient | None = None) -> T:
    """`call()`, again after a pause when it fails with a transient store or network error.

    With `client`, a server found unreachable raises TrackingUnavailable, now and (after a failed health
    probe) for every later call to it until it answers again.
    """
    uri = client.tracking_uri if client is not None and is_remote(client.tracking_uri) else None
    if uri in _DOWN:
        problem = _health(uri, HEALTH_TIMEOUT_S)
        if problem:
            raise TrackingUnavailable(uri, what, f"still down: {problem}")
        _DOWN.pop(uri, None)
    delays = () if _FAIL_FAST.get() else RETRY_DELAYS
    for delay in (*delays, None):
        try:
            result = call()
        except (MlflowException, OSError) as exc:
            if isinstance(exc, TrackingUnavailable):
                raise
            text = f"{type(exc).__name__}: {exc}".lower()
            if delay is None or not any(marker in text for marker in _TRANSIENT):
                if uri and any(marker in text for marker in _UNREACHABLE):
                    _DOWN[uri] = time.monotonic()
                    raise TrackingUnavailable(uri, what, first_line(exc)) from exc
                raise
            log.warning("MLflow: %s failed (%s); retrying in %.1f s", what, first_line(exc), delay)
            time.sleep(delay)
        else:
            return result
    raise AssertionError("unreachable")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The start of an error's message, for a one-line report."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a store that is busy or a server that does not answer: worth trying again later."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, TrackingUnavailable) or any(marker in text for marker in _TRANSIENT)


@contextmanager
def fail_fast(timeout_s: int = 15) -> Iterator[None]:
    """One attempt per call (and one quick HTTP retry, for a stale pooled connection), for a caller that
    keeps what failed and tries again later: the Tune callback, which must not stall the sweep.

    MLflow reads its HTTP retry settings from the environment at each request, so they are set here and
    put back afterwards: for the driver's thread, which is the only one that writes to MLflow.
    """
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    token = _FAIL_FAST.set(True)
    try:
        yield
    finally:
        _FAIL_FAST.reset(token)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _health(uri: str, timeout_s: float) -> str | None:
    """None if a server answers at `uri` (any HTTP answer: a proxy may not serve /health), else why not."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None
