"""The locked test set and bring-your-own data, with their failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from trainers.config import ConfigError, DataConfig, from_dict
from trainers.data import DataError, LockMismatchError, check_no_overlap, prepare, verify_lock
from trainers.task import make_dates


def small(tmp_path: Path, **kw: object) -> DataConfig:
    return DataConfig(n_examples=200, test_size=30, val_size=10, lock_dir=str(tmp_path / "lock"), **kw)  # type: ignore[arg-type]


def test_builtin_task_is_deterministic_and_distinct() -> None:
    a, b = make_dates(300, seed=7), make_dates(300, seed=7)
    assert a == b and make_dates(300, seed=8) != a
    assert len({r["prompt"].lower() for r in a}) == 300
    assert all(len(r["completion"]) == 10 and r["completion"][4] == "-" for r in a)


def test_lock_is_created_once_then_verified(tmp_path: Path) -> None:
    cfg = small(tmp_path)
    first = prepare(cfg)
    manifest = json.loads((tmp_path / "lock" / "manifest.json").read_text())
    assert manifest["sha256"] == first.sha256 and manifest["count"] == 30 and manifest["seed"] == cfg.seed
    assert {"source", "created"} <= set(manifest)
    second = prepare(cfg)
    assert second.test == first.test and second.sha256 == first.sha256
    test_prompts = {r["prompt"] for r in first.test}
    assert not test_prompts & {r["prompt"] for r in first.train + first.val}
    assert len(first.val) == 10 and len(first.train) == 160


def test_changed_or_missing_lock_is_a_hard_error(tmp_path: Path) -> None:
    cfg = small(tmp_path)
    prepare(cfg)
    test_file = tmp_path / "lock" / "test.jsonl"
    original = test_file.read_text()
    test_file.write_text(original.replace("2", "3", 1))
    with pytest.raises(LockMismatchError, match="sha256 is .* the lock says"):
        prepare(cfg)
    test_file.unlink()
    with pytest.raises(LockMismatchError, match="missing"):
        verify_lock(tmp_path / "lock")


def test_overlap_between_test_and_training_is_refused() -> None:
    rows = make_dates(5, seed=1)
    leaked = [{"prompt": "  " + rows[0]["prompt"].upper(), "completion": "x"}]
    with pytest.raises(DataError, match="duplicate locked test examples"):
        check_no_overlap(rows, leaked)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_bring_your_own_data(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame([{"question": r["prompt"], "answer": r["completion"]} for r in make_dates(120, seed=3)])
    path = tmp_path / f"mine{suffix}"
    {".jsonl": lambda: df.to_json(path, orient="records", lines=True), ".csv": lambda: df.to_csv(path, index=False),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()  # fmt: skip
    cfg = DataConfig(source=str(path), prompt_column="question", completion_column="answer", test_size=20,
                     val_size=10, lock_dir=str(tmp_path / "lock"), prompt_template="Q: {prompt}")  # fmt: skip
    splits = prepare(cfg)
    assert len(splits.test) == 20 and len(splits.val) == 10 and len(splits.train) == 90
    assert not splits.test[0]["prompt"].startswith("Q: ")  # rows stay raw: trainers/render.py applies the template


def test_bad_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        prepare(DataConfig(source=str(tmp_path / "nope.jsonl"), lock_dir=str(tmp_path / "l")))
    (tmp_path / "wrong.jsonl").write_text('{"text": "a", "label": "b"}\n' * 50)
    with pytest.raises(DataError, match="missing column.*prompt.*it has text, label"):
        prepare(DataConfig(source=str(tmp_path / "wrong.jsonl"), lock_dir=str(tmp_path / "l")))
    (tmp_path / "few.jsonl").write_text('{"prompt": "a", "completion": "b"}\n' * 5)
    with pytest.raises(DataError, match="5 usable examples, need at least"):
        prepare(DataConfig(source=str(tmp_path / "few.jsonl"), lock_dir=str(tmp_path / "l")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError):
        prepare(DataConfig(source=str(tmp_path / "empty.jsonl"), lock_dir=str(tmp_path / "l")))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported type"):
        prepare(DataConfig(source=str(tmp_path / "x.txt"), lock_dir=str(tmp_path / "l")))
    assert not (tmp_path / "l").exists()  # nothing written half-way


def test_config_problems_are_reported_all_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"method": "lorax", "rank": 0, "learning_rate": -1, "stepz": 3, "data": {"metric": "bleu"}})
    text = str(err.value)
    for needle in ("method: 'lorax'", "stepz: unknown key", "learning_rate: -1", "data.metric: 'bleu'"):
        assert needle in text
    with pytest.raises(ConfigError, match="rank: 0"):
        from_dict({"method": "lora", "rank": 0, "alpha": -2})
