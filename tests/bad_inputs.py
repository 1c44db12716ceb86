"""The bad inputs of test_bad_input.py, made in a test's folder: data files, sweep and trial configs, search
spaces, model folders, locks changed after the fact, and the command lines that hand them to `sweepboard`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "sweeps" / "configs" / "smoke.yaml"
SMOKE_DATA = {"n_examples": 300, "test_size": 40, "val_size": 20}


def rows(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"prompt": f"What is {i} plus {i}?", "completion": str(2 * i)} for i in range(start, start + n)]


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


def write_yaml(path: Path, data: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def sweep_config(tmp: Path, trial: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                 **top: Any) -> str:  # fmt: skip
    """The smoke sweep (tiny model, builtin data), changed where a case says so."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(name="bad", **top)
    raw["trial"].update(trial or {})
    raw["trial"]["data"].update(data or {})
    return write_yaml(tmp / "in" / "sweep.yaml", raw)


def own_data(tmp: Path, source: str) -> dict[str, Any]:
    return {"source": source, "lock_dir": str(tmp / "lock"), "test_size": 40, "val_size": 20}


def lora_space(**params: Any) -> dict[str, Any]:
    lora = {
        "rank": {"type": "categorical", "choices": [4, 8]},
        "alpha_ratio": {"type": "fixed", "value": 2},
        "target_modules": {"type": "fixed", "value": "attention"},
        "lora_dropout": {"type": "fixed", "value": 0.05},
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    }
    lora.update(params)
    return {"methods": {"lora": lora}}


def space_file(tmp: Path, data: dict[str, Any]) -> str:
    return write_yaml(tmp / "in" / "space.yaml", data)


def model_folder(tmp: Path, config: dict[str, Any] | None, files: tuple[str, ...] = ()) -> str:
    folder = tmp / "in" / "model"
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    for name in files:
        (folder / name).write_text("{}")
    return str(folder)


BERT = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100}  # fmt: skip
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100}  # fmt: skip


def tampered_lock(tmp: Path) -> Path:
    """A lock of the builtin task in tmp, whose test file was edited after it was locked."""
    from trainers.config import DataConfig
    from trainers.data import prepare

    lock = tmp / "lock"
    prepare(DataConfig(**SMOKE_DATA, lock_dir=str(lock)))  # type: ignore[arg-type]
    test = lock / "test.jsonl"
    first, rest = test.read_text().split("\n", 1)
    row = json.loads(first)
    row["completion"] = "1999-01-01"  # someone "fixed" an answer in the locked set
    test.write_text(json.dumps(row) + "\n" + rest)
    return lock


def other_lock(tmp: Path) -> Path:
    """A lock of the smoke config's builtin data carved with another test_size."""
    from trainers.config import DataConfig
    from trainers.data import prepare

    lock = tmp / "lock"
    prepare(DataConfig(**{**SMOKE_DATA, "test_size": 30}, lock_dir=str(lock)))  # type: ignore[arg-type]
    return lock


def sweep(*args: str, budget: str = "5") -> list[str]:
    return ["sweep", "--budget", budget, *args]


Args = Callable[[Path], list[str]]


def sweep_on_data(make: Callable[[Path], str]) -> Args:
    """The smoke sweep on bring-your-own data made by `make` (a path), locked in the test's folder."""
    return lambda t: sweep("--config", sweep_config(t, data=own_data(t, make(t))))


def sweep_on_space(space: dict[str, Any]) -> Args:
    return lambda t: sweep("--config", "smoke", "--space", space_file(t, space))


def sweep_with_trial(make: Callable[[Path], dict[str, Any]]) -> Args:
    return lambda t: sweep("--config", sweep_config(t, trial=make(t)))


def train(make: Callable[[Path], dict[str, Any]], *args: str) -> Args:
    """`train` with a trial config file (tiny model, the smoke data) changed by `make`."""
    return lambda t: ["train", "--config", trial_yaml(t, **make(t)), *args, "--out", train_out(t)]


def train_out(tmp: Path) -> str:
    # `train` makes its output folder before it reads data and model (trainers/trial.py); the cases check
    # that nothing is written into it.
    return str(tmp / "out")


def trial_yaml(tmp: Path, **settings: Any) -> str:
    raw = {"model": "builtin:tiny", "steps": 2, "data": SMOKE_DATA, **settings}
    return write_yaml(tmp / "in" / "trial.yaml", raw)


def junk(name: str, content: bytes) -> Callable[[Path], str]:
    return lambda t: str(_write_bytes(t / "in" / name, content))


def jsonl(name: str, items: list[dict[str, Any]]) -> Callable[[Path], str]:
    return lambda t: write_jsonl(t / "in" / name, items)


def _write_bytes(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path
