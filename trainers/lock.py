"""The locked test set as a contract: a folder with the raw test rows and a manifest of what defines them.

The manifest records the sha256 of the rows and every setting that decides which rows are in the test set
(the source's content sha256, the columns, the format, test_size, seed, n_examples for the built-in task, the
test file's sha256). A data config that disagrees with it on any of those is refused, naming each field; it
is never silently re-carved or swapped for a new lock. The prompt and chat templates are recorded too, for
information only: they change how rows are rendered for the model, not which rows are in the test set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainers.config import DEFAULT_TEST_SIZE, DataConfig
from trainers.rows import DataError, Loaded, Row, content_sha256

VERSION = 2
# The manifest's defining fields, each a data config key: a difference in any is a different test set.
DEFINING = ("source", "n_examples", "prompt_column", "completion_column", "format", "test_size", "seed",
            "test_source")  # fmt: skip
ROW_FORMAT = ("JSON Lines of raw rows, {prompt, completion} or {messages, completion}; sha256 over canonical JSON "
              "of [[prompt, completion], ...] (chat: [[[[role, content], ...], completion], ...])")  # fmt: skip


class LockMismatchError(DataError):
    """The locked test set changed since it was locked: a hard error, never silently re-locked."""


class LockConflictError(DataError):
    """The data config asks for a different test set than the one locked in its lock folder."""


def lock_path(cfg: DataConfig) -> Path:
    """The default lock folder depends on the source's identity only (its path; for the built-in task, what
    generates its rows), never on test_size and the like: a changed setting meets the existing lock and is
    refused, instead of quietly making a second test set beside it."""
    if cfg.lock_dir:
        return Path(cfg.lock_dir).expanduser()
    if cfg.source.startswith("builtin:"):
        name = f"{cfg.source.split(':', 1)[1]}-n{cfg.n_examples}-seed{cfg.seed}"
    else:
        src = Path(cfg.source).expanduser().resolve()
        name = f"{src.stem}-{hashlib.sha256(str(src).encode()).hexdigest()[:8]}"
    return Path(os.environ.get("SWEEPBOARD_CACHE", ".cache")) / "locks" / name


def definition(cfg: DataConfig, source: Loaded, test_source: Loaded | None) -> dict[str, Any]:
    """What decides which rows are in the test set, for this config and these files."""
    plain = source.format == "plain"
    columns = {"prompt_column": cfg.prompt_column if plain else None,
               "completion_column": cfg.completion_column if plain else None, "format": source.format}  # fmt: skip
    if test_source is not None:  # the test file is the test set: the source and the carve do not shape it
        return {"source": None, "n_examples": None, **columns, "test_size": None, "seed": None,
                "test_source": _identity(test_source)}  # fmt: skip
    builtin = source.sha256 is None
    return {"source": _identity(source), "n_examples": cfg.n_examples if builtin else None, **columns,
            "test_size": cfg.test_size or DEFAULT_TEST_SIZE, "seed": cfg.seed, "test_source": None}  # fmt: skip


def _identity(loaded: Loaded) -> str:
    return loaded.path if loaded.sha256 is None else f"sha256:{loaded.sha256}"


def check_agrees(lock_dir: Path, wanted: dict[str, Any], paths: dict[str, str | None],
                 would_lock: Callable[[], list[Row]]) -> dict[str, Any]:  # fmt: skip
    """The manifest, if its defining fields are the config's; otherwise one error naming each difference.
    `would_lock` gives the rows this config would lock, to check a manifest that records no defining fields."""
    manifest_file = lock_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as exc:
        raise LockMismatchError(
            f"{manifest_file}: unreadable lock manifest ({exc}); restore it from git/backup"
        ) from exc
    locked = manifest.get("defined_by") if isinstance(manifest, dict) else None
    if not isinstance(locked, dict):
        # A lock from before manifests recorded their defining fields (its rows may have been stored with a
        # template applied). It is trusted only when this config carves exactly its rows, hash for hash.
        if isinstance(manifest, dict) and content_sha256(would_lock()) == manifest.get("sha256"):
            return manifest
        raise LockConflictError(
            f"{manifest_file}: this lock was written by an earlier sweepboard: it does not record what defines it "
            "(source content, columns, format, test_size, seed), and its rows are not the ones this data config "
            f"would lock. Lock anew on purpose: set a new data.lock_dir (or move {lock_dir} away) and run "
            "`sweepboard lock` again; runs scored on the old lock are compared only with each other"
        )
    differ = [f for f in DEFINING if locked.get(f) != wanted.get(f)]
    if differ:
        was = {"source": manifest.get("source_path"), "test_source": manifest.get("test_source_path")}
        lines = [
            f"data.{f}: lock {_show(f, locked.get(f), was.get(f))}, config {_show(f, wanted.get(f), paths.get(f))}"
            for f in differ
        ]
        raise LockConflictError(
            f"data: the config disagrees with the locked test set in {lock_dir} on {len(differ)} setting(s) that "
            "decide which rows are in it:\n    " + "\n    ".join(lines) + "\n  Use the lock's settings, or lock "
            "a new test set on purpose in a new data.lock_dir (runs on different test sets are never compared)"
        )
    return manifest


_BY_TEST_FILE = "not used (the test set is data.test_source)"
NOT_USED = {"source": _BY_TEST_FILE, "seed": _BY_TEST_FILE, "test_size": _BY_TEST_FILE,
            "n_examples": "not used (not the built-in task)", "prompt_column": "not used (chat rows)",
            "completion_column": "not used (chat rows)", "test_source": "none (carved from data.source)"}  # fmt: skip


def _show(field: str, value: Any, path: str | None = None) -> str:
    if value is None:
        return NOT_USED.get(field, "none")
    if isinstance(value, str) and value.startswith("sha256:"):
        return f"a file with sha256 {value[7:19]}…" + (f" ({path})" if path else "")
    return repr(value)


def write(lock_dir: Path, test: list[Row], manifest: dict[str, Any]) -> None:
    lock_dir.mkdir(parents=True, exist_ok=True)
    # Rows first, manifest last and atomically: a crash in between leaves no manifest, so no half lock.
    _atomic_write(lock_dir / "test.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test))
    _atomic_write(lock_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def manifest(test: list[Row], wanted: dict[str, Any], cfg: DataConfig, source: Loaded,
             test_source: Loaded | None, counts: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    return {
        "version": VERSION,
        "sha256": content_sha256(test),
        "count": len(test),
        "defined_by": wanted,
        # Recorded for information: rendering does not change which rows are in the test set.
        "rendering": {"prompt_template": cfg.prompt_template, "chat_template": cfg.chat_template},
        "source_path": source.path,
        "test_source_path": test_source.path if test_source else None,
        **counts,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "row_format": ROW_FORMAT,
    }


def verify_lock(lock_dir: Path) -> tuple[list[Row], str]:
    """Read the locked test set and check its hash against the manifest. Call before every evaluation."""
    manifest_file, test_file = lock_dir / "manifest.json", lock_dir / "test.jsonl"
    try:
        expected = json.loads(manifest_file.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LockMismatchError(
            f"{manifest_file}: unreadable lock manifest ({exc}); restore it from git/backup"
        ) from exc
    if not test_file.is_file():
        raise LockMismatchError(f"{test_file}: the locked test set is missing; restore it (sha256 {expected})")
    try:
        test = [json.loads(line) for line in test_file.read_text().splitlines() if line.strip()]
        actual = content_sha256(test)
    except (ValueError, KeyError, TypeError) as exc:
        raise LockMismatchError(f"{test_file}: not valid locked rows ({exc!r}); restore the locked file") from exc
    if actual != expected:
        raise LockMismatchError(
            f"{test_file}: the locked test set changed: sha256 is {actual}, the lock says {expected}. "
            "Restore the original file; to start a new comparison on purpose, lock a new test set in a new "
            "lock folder (data.lock_dir) - runs on different test sets are never compared."
        )
    return test, actual


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
