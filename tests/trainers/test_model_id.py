"""The base model's identity a trial records: an absolute folder and a hash of its config and weights, cached
by file size and modification time so that a trial hashes a model folder once, not every time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainers import model_id


def model_folder(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"\0" * 1000)
    (path / "tokenizer.json").write_text("{}")
    return path


def test_a_folder_is_recorded_absolute_with_a_hash_of_config_and_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = model_folder(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    found = model_id.identity("m", tmp_path / "cache")
    assert found["base_model_path"] == str(folder.resolve())
    sha = found["base_model_sha256"]
    assert len(sha) == 64
    (folder / "tokenizer.json").write_text('{"changed": true}')  # not part of the identity
    assert model_id.folder_sha256(folder, tmp_path / "cache") == sha
    (folder / "model.safetensors").write_bytes(b"\1" * 1000)  # same size, new bytes and mtime
    assert model_id.folder_sha256(folder, tmp_path / "cache") != sha


def test_the_hash_is_cached_by_size_and_mtime(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m")
    sha = model_id.folder_sha256(folder, tmp_path / "cache")
    [cache] = (tmp_path / "cache" / ".hashes").glob("m-*.json")
    # Same stat, so the cache answers: a forged cached value proves no file was read again.
    record = json.loads(cache.read_text())
    cache.write_text(json.dumps({**record, "sha256": "cached"}))
    assert model_id.folder_sha256(folder, tmp_path / "cache") == "cached"
    stat = (folder / "config.json").stat()
    os.utime(folder / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert model_id.folder_sha256(folder, tmp_path / "cache") == sha  # touched: hashed again


def test_a_hub_id_is_kept_as_it_is_without_a_hash() -> None:
    assert model_id.identity("HuggingFaceTB/SmolLM2-135M") == {
        "base_model_path": "HuggingFaceTB/SmolLM2-135M", "base_model_sha256": None}  # fmt: skip
