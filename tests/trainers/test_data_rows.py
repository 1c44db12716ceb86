"""Real data as it comes: duplicate prompts, a test file of the user's own, chat rows in JSONL."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sweeps.cli import main
from trainers.config import ConfigError, DataConfig, from_dict
from trainers.data import (
    DataError,
    LockConflictError,
    content_sha256,
    load_rows,
    prepare,
    row_key,
    verify_lock,
)


def qa(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"prompt": f"What is {i} plus {i}?", "completion": str(2 * i)} for i in range(start, start + n)]


def jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def data_cfg(source: str, tmp_path: Path, **kw: Any) -> DataConfig:
    return DataConfig(source=source, **{"val_size": 10, "lock_dir": str(tmp_path / "lock"), "test_size": 20, **kw})


def test_row_key_and_hash() -> None:
    assert row_key({"prompt": "  What IS\n2 plus 2?", "completion": "4"}) == "what is 2 plus 2?"
    chat = {"messages": [{"role": "user", "content": "Hi  THERE"}], "completion": "hello"}
    assert row_key(chat) == row_key({"messages": [{"role": "user", "content": "hi there"}], "completion": "x"})
    assert row_key(chat) != row_key({"prompt": "hi there", "completion": "hello"})
    # Plain rows hash as locks always have: canonical JSON of [[prompt, completion], ...].
    rows = qa(3)
    canonical = json.dumps([[r["prompt"], r["completion"]] for r in rows], separators=(",", ":"))
    assert content_sha256(rows) == hashlib.sha256(canonical.encode()).hexdigest()
    assert content_sha256([chat]) != content_sha256([{"prompt": "Hi  THERE", "completion": "hello"}])


def test_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = qa(100)
    repeats = [{"prompt": "  " + rows[i]["prompt"].upper(), "completion": rows[i]["completion"]} for i in (5, 6, 7)]
    conflict = {"prompt": rows[8]["prompt"], "completion": "seventeen"}  # the copies disagree: no one answer
    source = jsonl(tmp_path / "d.jsonl", rows + repeats + [conflict])
    splits = prepare(data_cfg(source, tmp_path))
    assert (splits.n_rows, splits.duplicates_dropped, splits.conflicting_dropped) == (104, 3, 2)
    everything = splits.train + splits.val + splits.test
    assert len(everything) == 99 and len({row_key(r) for r in everything}) == 99
    assert rows[8]["prompt"] not in {r["prompt"] for r in everything}
    kept = {r["prompt"] for r in everything}
    assert {rows[i]["prompt"] for i in (5, 6, 7)} <= kept  # the first copy is the one kept
    manifest = json.loads((tmp_path / "lock" / "manifest.json").read_text())
    assert (manifest["rows_read"], manifest["duplicates_dropped"], manifest["conflicting_dropped"]) == (104, 3, 2)


def test_mostly_duplicates_is_refused_and_ten_percent_is_not(tmp_path: Path) -> None:
    rows = qa(100)
    ok = jsonl(tmp_path / "ok.jsonl", rows + [dict(r) for r in rows[:11]])  # 11 of 111 rows: 9.9 %
    assert prepare(data_cfg(ok, tmp_path)).duplicates_dropped == 11
    bad = jsonl(tmp_path / "bad.jsonl", rows + [dict(r) for r in rows[:12]])  # 12 of 112: 10.7 %
    with pytest.raises(DataError, match=r"12 of 112 rows \(11%\) repeat an earlier prompt.*rows 1 and 101"):
        prepare(data_cfg(bad, tmp_path, lock_dir=str(tmp_path / "other")))
    assert not (tmp_path / "other").exists()


def test_test_source_is_the_test_set_as_it_is(tmp_path: Path) -> None:
    train = qa(120)
    held_out = qa(20, start=500) + [{"prompt": r["prompt"].lower() + " ", "completion": r["completion"]}
                                    for r in train[:10]]  # fmt: skip  # 10 of the test rows are in the source too
    source, test_file = jsonl(tmp_path / "train.jsonl", train), jsonl(tmp_path / "test.jsonl", held_out)
    cfg = data_cfg(source, tmp_path, test_source=test_file, test_size=None)
    splits = prepare(cfg)
    assert splits.test == held_out  # every row, in the file's order, raw
    assert splits.removed_matching_test == 10 and len(splits.train) + len(splits.val) == 110
    assert not {row_key(r) for r in splits.test} & {row_key(r) for r in splits.train + splits.val}
    manifest = json.loads((tmp_path / "lock" / "manifest.json").read_text())
    assert manifest["removed_matching_test"] == 10 and manifest["test_rows_read"] == 30
    assert manifest["defined_by"]["test_source"].startswith("sha256:") and manifest["defined_by"]["test_size"] is None
    # The source is not what defines this test set: more training rows are fine, the counts follow.
    jsonl(tmp_path / "train.jsonl", train + qa(5, start=900))
    assert len(prepare(cfg).train) == len(splits.train) + 5
    # A changed test file is a different test set.
    jsonl(tmp_path / "test.jsonl", held_out[:-1])
    with pytest.raises(LockConflictError, match="data.test_source: lock a file with sha256 .*, config a file"):
        prepare(cfg)


def test_test_size_with_test_source_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.test_size: 300: not used with data.test_source.*remove data.test_size"):
        from_dict({"data": {"source": "a.jsonl", "test_source": "b.jsonl", "test_size": 300}})
    with pytest.raises(ConfigError, match="data.format: 'chatml': use auto, plain"):
        from_dict({"data": {"format": "chatml"}})


def chat(i: int, final: str = "assistant") -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "You add numbers."},
                         {"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": final, "content": str(2 * i)}], "id": i}  # fmt: skip


def test_chat_jsonl_rows(tmp_path: Path) -> None:
    source = jsonl(tmp_path / "chat.jsonl", [chat(i) for i in range(80)])
    cfg = data_cfg(source, tmp_path)
    rows = load_rows(cfg)
    assert rows[3] == {"messages": [{"role": "system", "content": "You add numbers."},
                                    {"role": "user", "content": "What is 3 plus 3?"}], "completion": "6"}  # fmt: skip
    splits = prepare(cfg)
    assert splits.format == "chat" and len(splits.test) == 20 and all("messages" in r for r in splits.test)
    test, sha = verify_lock(tmp_path / "lock")
    assert test == splits.test and sha == content_sha256(test)  # stored raw, hashed as chat rows
    manifest = json.loads((tmp_path / "lock" / "manifest.json").read_text())
    assert manifest["defined_by"]["format"] == "chat" and manifest["defined_by"]["prompt_column"] is None


def test_chat_row_not_ending_with_the_assistant_is_named(tmp_path: Path) -> None:
    items = [chat(i) for i in range(80)]
    items[16], items[41] = chat(16, final="user"), {"messages": [{"role": "assistant", "content": "hi"}]}
    source = jsonl(tmp_path / "chat.jsonl", items)
    with pytest.raises(DataError) as err:
        prepare(data_cfg(source, tmp_path))
    text = str(err.value)
    assert "2 chat row(s)" in text and "row 17: the last message is from 'user', not the assistant" in text
    assert "row 42: only an assistant message" in text
    with pytest.raises(DataError, match="missing column.*it has messages, id.*data.format: chat"):
        prepare(data_cfg(jsonl(tmp_path / "c2.jsonl", [chat(i) for i in range(80)]), tmp_path, format="plain"))


def test_lock_cli_prints_what_was_dropped_and_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = qa(150) + [dict(r) for r in qa(2)] + [{"prompt": "What is 9 plus 9?", "completion": "19"}]
    test = qa(30, start=140)  # 10 of them also in the training file
    args = ["lock", "--data", jsonl(tmp_path / "train.jsonl", train), "--format", "plain",
            "--test-source", jsonl(tmp_path / "test.jsonl", test), "--val-size", "10",
            "--lock-dir", str(tmp_path / "lock")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "created" in out and "30 examples" in out and "153 plain rows" in out
    assert "2 duplicate prompt(s) dropped" in out and "2 row(s) with conflicting duplicates dropped" in out
    assert "10 row(s) matching a test row removed" in out and "train 129, validation 10" in out
    assert main([*args, "--test-size", "30"]) == 2
    assert "data.test_size: 30: not used with data.test_source" in capsys.readouterr().err
