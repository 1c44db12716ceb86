"""Data: load the rows, lock the test set once, carve train and validation from the rest.

The locked test set is the only source of reported quality. It is written once (examples + manifest with the
sha256 of its canonical content) and verified before every evaluation; nothing trains or tunes on it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainers.config import DataConfig
from trainers.metrics import normalize
from trainers.task import make_dates

Row = dict[str, str]  # {"prompt": ..., "completion": ...}
SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FORMATS = {"json": "JSON Lines (one JSON object per line) or a JSON list", "csv": "CSV with a header row",
           "parquet": "Parquet"}


class DataError(ValueError):
    """A dataset or lock problem, naming the file and the fix."""


class LockMismatchError(DataError):
    """The locked test set changed since it was locked: a hard error, never silently re-locked."""


@dataclass(frozen=True)
class Splits:
    train: list[Row]
    val: list[Row]
    test: list[Row]
    sha256: str
    lock_dir: Path


def prepare(cfg: DataConfig) -> Splits:
    """Rows -> locked test set (created on first use, verified afterwards) -> train/val from the rest."""
    return _split(cfg, write_lock=True)


def check(cfg: DataConfig) -> Splits:
    """Every check `prepare` makes, with nothing written: a sweep calls it before it spends anything.
    Without a lock yet, the test set is carved in memory exactly as `prepare` will carve it."""
    return _split(cfg, write_lock=False)


def _split(cfg: DataConfig, write_lock: bool) -> Splits:
    rows = load_rows(cfg)
    lock_dir = lock_path(cfg)
    if (lock_dir / "manifest.json").exists():
        test, sha = verify_lock(lock_dir)
    elif write_lock:
        test, sha = create_lock(rows, cfg, lock_dir)
    else:
        test = carve_test(rows, cfg)
        sha = content_sha256(test)
    test_keys = {_key(r) for r in test}
    rest = [r for r in rows if _key(r) not in test_keys]
    if len(rest) < cfg.val_size + 1:
        raise DataError(
            f"{cfg.source}: {len(rest)} examples left after the {len(test)} locked test examples, need more than "
            f"data.val_size={cfg.val_size}: add data or lower data.val_size"
        )
    random.Random(cfg.seed + 1).shuffle(rest)
    val, train = rest[: cfg.val_size], rest[cfg.val_size :]
    check_no_overlap(test, train + val)  # a guard: rows are unique and the test rows were taken out
    return Splits(train=train, val=val, test=test, sha256=sha, lock_dir=lock_dir)


def load_rows(cfg: DataConfig) -> list[Row]:
    if cfg.source == "builtin:dates":
        return make_dates(cfg.n_examples, seed=cfg.seed)
    if cfg.source.startswith("builtin:"):
        raise DataError(f"data.source: {cfg.source!r}: unknown built-in task; the built-in is builtin:dates")
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise DataError(f"data.source: {cfg.source!r}: no such file; give a .jsonl, .csv or .parquet file")
    builder = SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"data.source: {cfg.source!r}: unsupported type; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(
            f"data.source: {cfg.source!r}: the file is empty; give rows with the columns "
            f"{cfg.prompt_column!r} and {cfg.completion_column!r}"
        )
    import datasets  # imported late: it is slow to import and only bring-your-own data needs it

    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for unreadable files
        root = exc  # datasets wraps the reader's error ("An error occurred while generating the dataset")
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        reason = (str(root).strip().splitlines() or [type(root).__name__])[0][:200]
        kind, columns = FORMATS[builder], f"{cfg.prompt_column!r} and {cfg.completion_column!r}"
        raise DataError(
            f"data.source: {cfg.source!r}: could not read it as {kind} ({reason}); "
            f"check that the file is valid {kind} with the columns {columns}"
        ) from exc
    missing = [c for c in (cfg.prompt_column, cfg.completion_column) if c not in ds.column_names]
    if missing:
        raise DataError(
            f"data.source: {cfg.source!r}: missing column(s) {', '.join(missing)}; it has "
            f"{', '.join(ds.column_names) or 'no columns'}: set data.prompt_column / data.completion_column"
        )
    rows = [
        {"prompt": str(p), "completion": str(c)}  # raw: trainers/render.py applies the template
        for p, c in zip(ds[cfg.prompt_column], ds[cfg.completion_column], strict=True)
        if p is not None and c is not None
    ]
    need = cfg.test_size + cfg.val_size + 1
    if len(rows) < need:
        raise DataError(
            f"data.source: {cfg.source!r}: {len(rows)} usable examples, need at least {need} "
            f"(test_size {cfg.test_size} + val_size {cfg.val_size} + training data): add data or lower them"
        )
    check_unique(rows, cfg.source)
    return rows


def lock_path(cfg: DataConfig) -> Path:
    if cfg.lock_dir:
        return Path(cfg.lock_dir).expanduser()
    if cfg.source.startswith("builtin:"):
        name = f"{cfg.source.split(':', 1)[1]}-n{cfg.n_examples}-seed{cfg.seed}-test{cfg.test_size}"
    else:
        src = Path(cfg.source).expanduser().resolve()
        name = f"{src.stem}-{hashlib.sha256(str(src).encode()).hexdigest()[:8]}"
    return Path(os.environ.get("SWEEPBOARD_CACHE", ".cache")) / "locks" / name


def carve_test(rows: list[Row], cfg: DataConfig) -> list[Row]:
    """The test set: `test_size` rows drawn with the data seed, kept in file order."""
    need = cfg.test_size + cfg.val_size + 1
    if len(rows) < need:
        more = "raise data.n_examples" if cfg.source.startswith("builtin:") else "add data"
        raise DataError(
            f"data.source: {cfg.source!r}: {len(rows)} examples, need at least {need} (test_size "
            f"{cfg.test_size} + val_size {cfg.val_size} + training data): {more} or lower them"
        )
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    return [rows[i] for i in sorted(order[: cfg.test_size])]


def create_lock(rows: list[Row], cfg: DataConfig, lock_dir: Path) -> tuple[list[Row], str]:
    test = carve_test(rows, cfg)
    sha = content_sha256(test)
    manifest = {
        "sha256": sha,
        "count": len(test),
        "source": cfg.source,
        "seed": cfg.seed,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "format": "jsonl rows {prompt, completion}; sha256 over canonical JSON of [[prompt, completion], ...]",
    }
    lock_dir.mkdir(parents=True, exist_ok=True)
    # Examples first, manifest last and atomically: a crash in between leaves no manifest, so no half lock.
    _atomic_write(lock_dir / "test.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test))
    _atomic_write(lock_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return test, sha


def verify_lock(lock_dir: Path) -> tuple[list[Row], str]:
    """Read the locked test set and check its hash against the manifest. Call before every evaluation."""
    manifest_file, test_file = lock_dir / "manifest.json", lock_dir / "test.jsonl"
    try:
        manifest = json.loads(manifest_file.read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise LockMismatchError(
            f"{manifest_file}: unreadable lock manifest ({exc}); restore it from git/backup"
        ) from exc
    if not test_file.is_file():
        raise LockMismatchError(
            f"{test_file}: the locked test set is missing; restore it (sha256 {expected})"
        )
    try:
        test = [json.loads(line) for line in test_file.read_text().splitlines() if line.strip()]
    except ValueError as exc:
        raise LockMismatchError(f"{test_file}: not valid JSONL ({exc}); restore the locked file") from exc
    actual = content_sha256(test)
    if actual != expected:
        raise LockMismatchError(
            f"{test_file}: the locked test set changed: sha256 is {actual}, the lock says {expected}. "
            "Restore the original file; to start a new comparison on purpose, lock a new test set in a new "
            "lock folder (data.lock_dir) - runs on different test sets are never compared."
        )
    return test, actual


def content_sha256(rows: list[Row]) -> str:
    canonical = json.dumps(
        [[r["prompt"], r["completion"]] for r in rows], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_no_overlap(test: list[Row], others: list[Row]) -> None:
    test_keys = {_key(r) for r in test}
    leaked = [r["prompt"] for r in others if _key(r) in test_keys]
    if leaked:
        raise DataError(
            f"{len(leaked)} train/validation example(s) duplicate locked test examples (after whitespace/case "
            f"normalisation), e.g. {leaked[0]!r}: remove them from the training data"
        )


def _key(row: Row) -> str:
    return normalize(row["prompt"])


def check_unique(rows: list[Row], source: str) -> None:
    """Refuse a prompt that appears twice: its copies could land on both sides of the test/train cut, and
    dropping one silently would change the data behind the user's back."""
    first: dict[str, int] = {}
    repeats: list[tuple[int, int, str]] = []
    for i, r in enumerate(rows, start=1):
        k = _key(r)
        if k in first:
            repeats.append((first[k], i, r["prompt"]))
        else:
            first[k] = i
    if repeats:
        a, b, prompt = repeats[0]
        raise DataError(
            f"data.source: {source!r}: {len(repeats)} prompt(s) appear more than once (after whitespace/case "
            f"normalisation), e.g. examples {a} and {b}: {prompt[:80]!r}; a repeated prompt could be in the "
            "locked test set and in training at once: remove or merge the duplicate rows"
        )


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
