"""Bad input, through the real CLI as a user meets it: every case exits 2 with a message that names the
problem and the fix, before anything is spent (no Ray, no training), and writes nothing: no sweep folder,
no MLflow store, no lock created or changed, no trial output.

One table, each case through the CLI's entry point (`sweeps.cli.main`, what `sweepboard` runs), one case
per family also as its own process (`python -m sweeps.cli ...`). The inputs are made by bad_inputs.py; the
security defaults are in test_security_defaults.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bad_inputs import (
    BERT,
    LLAMA,
    SMOKE_DATA,
    jsonl,
    junk,
    lora_space,
    model_folder,
    other_lock,
    own_data,
    rows,
    space_file,
    sweep,
    sweep_config,
    sweep_on_data,
    sweep_on_space,
    sweep_with_trial,
    tampered_lock,
    train,
    train_out,
)

# A port no server answers on, bound (never listening) for this process's life so nothing else takes it:
# a fixed number such as 9 may have a listener on some machine.
_REFUSED = socket.socket()
_REFUSED.bind(("127.0.0.1", 0))
REFUSED_PORT = _REFUSED.getsockname()[1]

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
SMOKE_LOCK = CACHE / "locks" / "dates-n300-seed1234"  # the smoke config's builtin data, shared


def _driver_has_gpu() -> bool:
    from tracking.prices import detect_device

    return detect_device().kind == "cuda"


# --- the table ----------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    args: Callable[[Path], list[str]]  # the command line after `sweepboard`, given the test's folder
    says: tuple[str, ...]  # every one must appear in stderr: the problem and the fix
    code: int = 2
    may_create: tuple[str, ...] = field(default=())  # empty folders allowed to appear (see train_out)


LORA = lora_space()["methods"]["lora"]
OUT = ("out",)  # `train` cases: the (empty) output folder may appear

CASES = [
    # Budget.
    Case("budget-missing", lambda t: ["sweep", "--config", "smoke"], ("--budget is required, in US dollars", "--budget 30")),
    Case("budget-zero", lambda t: sweep("--config", "smoke", budget="0"),
         ("--budget must be a positive number of US dollars, got '0'", "pass e.g. --budget 30")),
    Case("budget-negative", lambda t: sweep("--config", "smoke", budget="-3"),
         ("--budget must be a positive number of US dollars, got '-3'", "pass e.g. --budget 30")),
    Case("budget-not-a-number", lambda t: sweep("--config", "smoke", budget="thirty"),
         ("got 'thirty'", "pass e.g. --budget 30")),
    # The smoke trial plans at about 4 s: $0.12 at $100/h.
    Case("budget-below-one-trial", lambda t: sweep("--config", "smoke", "--price-per-hour", "100", budget="0.05"),
         ("--budget $0.05 is below one trial's projected cost $0.1", "s at $100.00/h)",
          "raise --budget to at least $0.1", "`make plan` shows the plan")),
    # Data.
    Case("data-missing", sweep_on_data(lambda t: str(t / "nope.jsonl")),
         ("data.source", "nope.jsonl", "no such file", "give a .jsonl, .csv or .parquet file")),
    Case("data-empty", sweep_on_data(jsonl("empty.jsonl", [])),
         ("empty.jsonl", "the file is empty", "give rows with the columns")),
    Case("data-junk-jsonl", sweep_on_data(junk("junk.jsonl", bytes(range(256)) * 40)),
         # The reader's own reason varies with how datasets falls back (a JSON parse error, or a UTF-8 one).
         ("junk.jsonl", "could not read it as JSON Lines", "check that the file is valid JSON Lines")),
    Case("data-corrupt-parquet", sweep_on_data(junk("data.parquet", b"PAR1" + bytes(range(200)) * 5 + b"PAR1")),
         ("data.parquet", "could not read it as Parquet", "check that the file is valid Parquet")),
    Case("data-wrong-columns",
         sweep_on_data(jsonl("cols.jsonl", [{"text": r["prompt"], "label": r["completion"]} for r in rows(100)])),
         ("missing column(s) prompt, completion; it has text, label", "set data.prompt_column")),
    Case("data-too-few", sweep_on_data(jsonl("few.jsonl", rows(30))),
         ("30 usable examples, need at least 61", "test_size 40 + val_size 20", "add data or lower them")),
    Case("data-builtin-too-few", lambda t: sweep("--config", sweep_config(t, data={"n_examples": 50})),
         ("'builtin:dates': 50 examples, need at least 61", "raise data.n_examples or lower them")),
    Case("data-mostly-duplicates",  # a few repeated prompts are dropped and counted; more than 10% is refused
         sweep_on_data(jsonl("dup.jsonl", rows(100) + [{**r, "prompt": "  " + r["prompt"].upper()} for r in rows(12)])),
         ("12 of 112 rows (11%) repeat an earlier prompt", "rows 1 and 101", "remove the repeated rows")),
    Case("lock-disagrees", lambda t: sweep("--config", sweep_config(t, data={"lock_dir": str(other_lock(t))})),
         ("disagrees with the locked test set", "data.test_size: lock 30, config 40", "new data.lock_dir")),
    Case("lock-changed", lambda t: sweep("--config", sweep_config(t, data={"lock_dir": str(tampered_lock(t))})),
         ("the locked test set changed: sha256 is", "the lock says", "Restore the original file")),
    # Search space and sweep config.
    Case("target-module-unknown",
         sweep_on_space(lora_space(target_modules={"type": "categorical", "choices": ["attention", "q_proj,qq_proj"]})),
         ("methods.lora.target_modules.choices[1]", "the model has no modules named ['qq_proj']",
          "available Linear modules", "list existing names")),
    Case("rank-zero", sweep_on_space(lora_space(rank={"type": "categorical", "choices": [0, 8]})),
         ("methods.lora.rank.choices[0]: 0", "rank must be a positive integer")),
    Case("alpha-zero",
         sweep_on_space({"methods": {"lora": {**{k: v for k, v in LORA.items() if k != "alpha_ratio"},
                                              "alpha": {"type": "fixed", "value": 0}}}}),
         ("methods.lora.alpha.value: 0", "alpha must be a positive number", "2 x rank")),
    Case("lr-range-empty",
         sweep_on_space(lora_space(learning_rate={"type": "float", "low": 1e-3, "high": 1e-5, "log": True})),
         ("methods.lora.learning_rate.low: 0.001", "low must be below high (1e-05)")),
    Case("lr-not-positive", sweep_on_space(lora_space(learning_rate={"type": "float", "low": -1e-4, "high": 1e-3})),
         ("methods.lora.learning_rate.low: -0.0001", "learning_rate must be a number in (0, 1)")),
    Case("method-unknown-in-space", sweep_on_space({"methods": {"lora": LORA, "lorax": {}}}),
         ("methods.lorax: 'lorax': unknown method", "use ['lora', 'qlora', 'full']")),
    Case("unknown-key-in-space", sweep_on_space({**lora_space(), "metods": {}}),
         ("metods: {}: unknown key", "allowed top-level keys")),
    Case("unknown-key-in-sweep-config", lambda t: sweep("--config", sweep_config(t, max_trial=3)),
         ("max_trial: unknown key", "known keys:", "max_trials")),
    Case("gpu-not-in-catalog", lambda t: sweep("--config", sweep_config(t, gpu="a100")),
         ("gpu: 'a100': not a GPU of the price catalog", "a100-80gb", "h100-sxm")),
    Case("unknown-key-in-sweep-trial", sweep_with_trial(lambda t: {"stepz": 3}),
         ("trial.stepz: unknown key (did you mean steps?)",)),
    Case("searched-key-fixed-in-sweep", sweep_with_trial(lambda t: {"method": "lorax"}),
         ("trial.method: is searched, not fixed", "set it in the search space")),
    # Model.
    Case("model-missing", sweep_with_trial(lambda t: {"model": str(t / "no-model")}),
         ("no-model", "no such folder", "give a local Hugging Face causal LM folder")),
    Case("model-not-causal", sweep_with_trial(lambda t: {"model": model_folder(t, BERT)}),
         ("is a BertForMaskedLM, not a causal language model", "give a folder of one")),
    Case("model-no-config", sweep_with_trial(lambda t: {"model": model_folder(t, None, ("model.safetensors",))}),
         ("no config.json there", "not a Hugging Face causal language model folder",
          "give the folder that save_pretrained wrote")),
    Case("model-no-weights", sweep_with_trial(lambda t: {"model": model_folder(t, LLAMA, ("tokenizer.json",))}),
         ("no weights in that folder", "model.save_pretrained(folder)")),
    # Tracking and resume.
    Case("tracking-unreachable",
         lambda t: sweep("--config", "smoke", "--tracking-uri", f"http://127.0.0.1:{REFUSED_PORT}"),
         (f"tracking URI http://127.0.0.1:{REFUSED_PORT}: no MLflow server answers", "start one")),
    Case("tracking-folder-missing",
         lambda t: sweep("--config", "smoke", "--tracking-uri", f"sqlite:///{t / 'nowhere' / 'mlflow.db'}"),
         ("nowhere does not exist", "create it")),
    Case("resume-unknown-sweep", lambda t: ["resume", "no-such-sweep"],
         ("sweep 'no-such-sweep': nothing to resume", "make sweep BUDGET=... NAME=no-such-sweep")),
    # Several problems, one run: all of them reported.
    Case("all-at-once",
         lambda t: sweep("--config", sweep_config(t, trial={"model": str(t / "no-model")},
                                                  data=own_data(t, str(t / "nope.jsonl"))),
                         "--space", space_file(t, lora_space(rank={"type": "fixed", "value": 0})), budget="0"),
         ("--budget must be a positive number", "rank must be a positive integer", "nope.jsonl", "no-model")),
    # One trial, standalone.
    Case("train-rank-zero", lambda t: ["train", "--method", "lora", "--rank", "0", "--out", train_out(t)],
         ("rank: 0: LoRA rank must be a positive integer",)),
    Case("train-alpha-negative", lambda t: ["train", "--method", "lora", "--alpha", "-1", "--out", train_out(t)],
         ("alpha: -1.0: LoRA alpha must be positive",)),
    Case("train-lr-zero", lambda t: ["train", "--method", "full", "--lr", "0", "--out", train_out(t)],
         ("learning_rate: 0.0: must be in (0, 1)",)),
    Case("train-method-unknown", lambda t: ["train", "--method", "lorax", "--out", train_out(t)],
         ("invalid choice: 'lorax'", "choose from")),
    Case("train-unknown-key", train(lambda t: {"stepz": 3}), ("stepz: unknown key (did you mean steps?)", "known keys")),
    Case("train-target-module-unknown", train(lambda t: {"target_modules": "qq_proj"}),
         ("the model has no modules named ['qq_proj']", "available Linear modules"), may_create=OUT),
    Case("train-model-not-causal", train(lambda t: {"model": model_folder(t, BERT)}),
         ("is a BertForMaskedLM, not a causal language model", "give a folder of one"), may_create=OUT),
    Case("train-model-missing", train(lambda t: {"model": str(t / "no-model")}),
         ("no such folder", "causal LM folder"), may_create=OUT),
    Case("train-data-missing", train(lambda t: {}, "--data", "nope.jsonl"), ("no such file",), may_create=OUT),
    Case("train-lock-changed", train(lambda t: {"data": {**SMOKE_DATA, "lock_dir": str(tampered_lock(t))}}),
         ("the locked test set changed", "Restore the original file"), may_create=OUT),
    # The plan, before a sweep.
    Case("plan-gpu-unknown", lambda t: ["plan", "--params", "7B", "--gpu", "b200"],
         ("gpu: 'b200': not in the price catalog", "a100-80gb", "t4")),
    Case("plan-model-size-unreadable", lambda t: ["plan", "--model", str(t / "no-model")],
         ("its size cannot be read", "--params 7B")),
    Case("plan-seq-len-zero", lambda t: ["plan", "--params", "7B", "--seq-len", "0"],
         ("--seq-len: 0: must be a positive number",)),
    Case("plan-budget-buys-no-trial", lambda t: ["plan", "--params", "7B", "--gpu", "h100-sxm", "--budget", "0.001"],
         ("--budget: 0.001: buys no trial", "raise the budget")),
]  # fmt: skip
if not _driver_has_gpu():  # the GPU-less driver's refusal; a GPU driver prices by its own GPU instead
    CASES.append(Case("gpu-method-on-a-gpu-less-driver",
                      lambda t: sweep("--config", sweep_config(t, resources={"full": {"gpus": 4}})),
                      ("method full: resources: gpus=4: this machine has no GPU", "`gpu: KEY` in the sweep config",
                       "a100-80gb", "--price-per-hour USD")))  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """Every folder and file under root, with a hash of each file's content."""
    if not root.exists():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return out


ENV = {"SWEEPBOARD_CACHE": str(CACHE), "HF_HUB_OFFLINE": "1"}  # nothing here may need a network


def in_process(tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:  # fmt: skip
    """`sweepboard ARGS` through the console script's own entry point, in a fresh working folder."""
    from sweeps.cli import main

    for key, value in {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "work").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "work")
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def subprocess_cli(tmp_path: Path, args: list[str]) -> tuple[int, str]:
    """`python -m sweeps.cli ARGS` as its own process, as a user runs `sweepboard`."""
    env = {**os.environ, **ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    (tmp_path / "work").mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=tmp_path / "work", env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "Started a local Ray instance" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr  # in-process, an uncaught error fails the test by itself
    return done.returncode, done.stderr


@pytest.fixture(scope="module", autouse=True)
def smoke_lock() -> None:
    """The smoke config's builtin lock, as any earlier smoke run leaves it: the cases must not change it."""
    if not (SMOKE_LOCK / "manifest.json").exists():
        from trainers.config import DataConfig
        from trainers.data import prepare

        prepare(DataConfig(**SMOKE_DATA))  # type: ignore[arg-type]


def assert_refused(case: Case, tmp_path: Path, run: Callable[[list[str]], tuple[int, str]]) -> None:
    args = case.args(tmp_path)
    before, lock_before = snapshot(tmp_path), snapshot(SMOKE_LOCK)
    locks_before = sorted(p.name for p in (CACHE / "locks").glob("*"))
    code, stderr = run(args)
    assert code == case.code, stderr[-3000:]
    for needle in case.says:
        assert needle in stderr, f"{needle!r} not in:\n{stderr[-3000:]}"
    # Nothing written half-way: no runs/, no mlflow.db, no lock created or changed, no trial output.
    after = snapshot(tmp_path)
    new = {k: v for k, v in after.items() if k not in before and k != "work"}
    assert all(v == "<dir>" and k in case.may_create for k, v in new.items()), new
    assert {k: v for k, v in after.items() if k in before} == before
    assert snapshot(SMOKE_LOCK) == lock_before
    assert sorted(p.name for p in (CACHE / "locks").glob("*")) == locks_before  # no new lock in the cache
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()  # Ray never started


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_named_with_its_fix_and_nothing_is_written(
    tmp_path: Path, case: Case, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_refused(case, tmp_path, lambda args: in_process(tmp_path, args, monkeypatch, capsys))


# Every `sweepboard` process imports torch, mlflow and matplotlib first (about 10 s here), so the whole
# table runs in-process above and one case per family runs again as its own process.
AS_PROCESS = ("budget-missing", "budget-zero", "data-junk-jsonl", "lock-changed", "target-module-unknown",
              "model-not-causal", "all-at-once", "resume-unknown-sweep", "train-model-not-causal")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.id in AS_PROCESS], ids=lambda c: c.id)
def test_bad_input_as_its_own_process(tmp_path: Path, case: Case) -> None:
    assert_refused(case, tmp_path, lambda args: subprocess_cli(tmp_path, args))
