"""Data: raw rows -> duplicates dropped -> the locked test set (created once, then checked) -> train/validation.

The locked test set is the only source of reported quality. Its rows are identified raw (before any template),
so no template, column or format change can bring a test row into training or validation. Reading files and
dropping duplicates live in trainers/rows.py, the lock's contract in trainers/lock.py; both are re-exported here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from trainers.config import DEFAULT_TEST_SIZE, DataConfig
from trainers.lock import (
    LockConflictError,
    LockMismatchError,
    check_agrees,
    definition,
    lock_path,
    verify_lock,
)
from trainers.lock import manifest as lock_manifest
from trainers.lock import write as write_lock
from trainers.rows import DataError, Row, content_sha256, dedup, load_rows, read, row_key, show

__all__ = ["DataError", "LockConflictError", "LockMismatchError", "Row", "Splits", "check", "check_no_overlap",
           "content_sha256", "describe", "load_rows", "lock_path", "prepare", "row_key", "verify_lock"]  # fmt: skip


@dataclass(frozen=True)
class Splits:
    train: list[Row]
    val: list[Row]
    test: list[Row]
    sha256: str
    lock_dir: Path
    format: str = "plain"  # plain | chat
    n_rows: int = 0  # rows read from data.source (with a prompt and a completion)
    duplicates_dropped: int = 0  # later copies of a prompt, dropped before the carve (the first is kept)
    conflicting_dropped: int = 0  # rows whose copies disagree on the completion: all dropped
    removed_matching_test: int = 0  # data.source rows that match a data.test_source row
    created: bool = False  # this call wrote the lock


def prepare(cfg: DataConfig) -> Splits:
    """Rows -> locked test set (created on first use, checked against the config afterwards) -> train/val."""
    return _split(cfg, write=True)


def check(cfg: DataConfig) -> Splits:
    """Every check `prepare` makes, with nothing written: a sweep calls it before it spends anything.
    Without a lock yet, the test set is carved in memory exactly as `prepare` will carve it."""
    return _split(cfg, write=False)


def _split(cfg: DataConfig, write: bool) -> Splits:
    source = read(cfg, "source")
    rows = dedup(source.rows, "source", cfg.source)
    test_source = read(cfg, "test_source") if cfg.test_source else None
    if test_source is not None and test_source.format != source.format:
        raise DataError(
            f"data.test_source: {cfg.test_source!r}: has {test_source.format} rows, data.source has "
            f"{source.format} rows: give both files in one format (or set data.format)"
        )
    # The user's own test file is the test set as it is, never split; its repeats are dropped by the same
    # rule as the source's, so each prompt is scored once and against one answer.
    test_rows = dedup(test_source.rows, "test_source", str(cfg.test_source)) if test_source else None
    wanted = definition(cfg, source, test_source)
    lock_dir = lock_path(cfg)
    exists = (lock_dir / "manifest.json").exists()

    def would_lock() -> list[Row]:
        return test_rows.rows if test_rows else carve_test(rows.rows, cfg)

    if exists:
        paths = {"source": source.path, "test_source": test_source.path if test_source else None}
        check_agrees(lock_dir, wanted, paths, would_lock)
        test, sha = verify_lock(lock_dir)
    else:
        test = would_lock()
        sha = content_sha256(test)
    test_keys = {row_key(r) for r in test}
    rest = [r for r in rows.rows if row_key(r) not in test_keys]
    removed = len(rows.rows) - len(rest) if test_source is not None else 0
    if len(rest) < cfg.val_size + 1:
        raise DataError(
            f"{cfg.source}: {len(rest)} examples left after the {len(test)} locked test examples, need more than "
            f"data.val_size={cfg.val_size}: add data or lower data.val_size"
        )
    if write and not exists:  # last, once every check has passed: a refused config leaves no lock behind
        counts = {"rows_read": len(source.rows), "duplicates_dropped": rows.duplicates,
                  "conflicting_dropped": rows.conflicting, "removed_matching_test": removed}  # fmt: skip
        if test_source is not None and test_rows is not None:
            counts.update(test_rows_read=len(test_source.rows), test_duplicates_dropped=test_rows.duplicates,
                          test_conflicting_dropped=test_rows.conflicting)  # fmt: skip
        write_lock(lock_dir, test, lock_manifest(test, wanted, cfg, source, test_source, counts))
    random.Random(cfg.seed + 1).shuffle(rest)
    val, train = rest[: cfg.val_size], rest[cfg.val_size :]
    check_no_overlap(test, train + val)  # a guard: the test rows were taken out by the same key
    return Splits(train=train, val=val, test=test, sha256=sha, lock_dir=lock_dir, format=source.format,
                  n_rows=len(source.rows), duplicates_dropped=rows.duplicates,
                  conflicting_dropped=rows.conflicting, removed_matching_test=removed,
                  created=write and not exists)  # fmt: skip


def carve_test(rows: list[Row], cfg: DataConfig) -> list[Row]:
    """The test set: `test_size` rows drawn with the data seed, kept in file order."""
    size = cfg.test_size or DEFAULT_TEST_SIZE
    need = size + cfg.val_size + 1
    if len(rows) < need:
        builtin = cfg.source.startswith("builtin:")
        what = "examples" if builtin else "usable examples"
        more = "raise data.n_examples" if builtin else "add data"
        raise DataError(
            f"data.source: {cfg.source!r}: {len(rows)} {what}, need at least {need} (test_size "
            f"{size} + val_size {cfg.val_size} + training data): {more} or lower them"
        )
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    return [rows[i] for i in sorted(order[:size])]


def check_no_overlap(test: list[Row], others: list[Row]) -> None:
    test_keys = {row_key(r) for r in test}
    leaked = [show(r) for r in others if row_key(r) in test_keys]
    if leaked:
        raise DataError(
            f"{len(leaked)} train/validation example(s) duplicate locked test examples (after whitespace/case "
            f"normalisation), e.g. {leaked[0]!r}: remove them from the training data"
        )


def describe(splits: Splits) -> str:
    """One line for the console: the lock, and what was dropped or removed on the way to train/validation."""
    verb = "created" if splits.created else "verified"
    return (
        f"locked test set ({verb}): {len(splits.test)} examples, sha256 {splits.sha256[:12]}… ({splits.lock_dir}); "
        f"data: {splits.n_rows} {splits.format} rows, {splits.duplicates_dropped} duplicate prompt(s) dropped "
        f"(first kept), {splits.conflicting_dropped} row(s) with conflicting duplicates dropped, "
        f"{splits.removed_matching_test} row(s) matching a test row removed; train {len(splits.train)}, "
        f"validation {len(splits.val)}"
    )
