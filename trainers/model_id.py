"""Which base model a trial ran on: its folder as an absolute path and a sha256 of its config and weights.

An exported adapter is only as good as the base it is applied to, so the trial records both and `export`
checks them again. Hashing a 500 MB folder takes seconds, so the hash is cached per folder under the model
cache, keyed by each file's size and modification time: a trial pays for it once per model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

HASHED = ("config.json", "*.safetensors", "pytorch_model*.bin", "model*.bin")  # config + weights, not tokenizer


def identity(path: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """{"base_model_path", "base_model_sha256"} for what `trainers.model.resolve` returned: a local folder
    (made absolute, hashed) or a hub id (kept as it is; no hash, the hub's revision is its identity)."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        return {"base_model_path": path, "base_model_sha256": None}
    folder = folder.resolve()
    return {"base_model_path": str(folder), "base_model_sha256": folder_sha256(folder, cache_dir)}


def folder_sha256(folder: Path, cache_dir: str | Path | None = None) -> str:
    """sha256 over config.json and the weight files (names and bytes, in name order); cached by stat."""
    files = _hashed_files(folder)
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = _cache_file(folder, cache_dir)
    try:
        known = json.loads(cache.read_text())
        if known.get("path") == str(folder) and known.get("files") == stamp:
            return str(known["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no cache yet, or unreadable: hash again
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with f.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    sha = digest.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(folder), "files": stamp, "sha256": sha}))
        tmp.replace(cache)  # atomic: concurrent trials never read half a file
    except OSError:
        pass  # a read-only cache only costs the next caller a rehash
    return sha


def _hashed_files(folder: Path) -> list[Path]:
    found = {f for pattern in HASHED for f in folder.glob(pattern) if f.is_file()}
    return sorted(found, key=lambda f: f.name)


def _cache_file(folder: Path, cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir or Path(os.environ.get("SWEEPBOARD_CACHE", ".cache")) / "models")
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:20]
    return root / ".hashes" / f"{folder.name}-{key}.json"
