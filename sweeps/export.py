"""`sweepboard export NAME [--run RUN_ID | --recommended] [--merge] --out DIR [--force]`: ship a sweep's run.

A LoRA/QLoRA run ships as its PEFT adapter folder (its base model recorded as an absolute folder or a hub
id), or with --merge as one safetensors model: the adapter merged into the 16-bit base (for QLoRA the
unquantized base, not the 4-bit one). A full fine-tuning run ships the model folder its trial wrote. Every
export gets a model card, and is loaded fresh from DIR to regenerate the run's locked-test predictions
before it counts as done (sweeps/export_check.py).

`prepare` makes every check and writes nothing, so refused input leaves no folder behind; `write` copies
or merges; the CLI then verifies, writes the card and hands the folder to the MLflow registry.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.runtime import STATE_FILE, known_sweeps, open_sweep
from sweeps.storage import is_remote, pull_final
from trainers.config import TrialConfig

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_OF = {"lora": "adapter", "qlora": "adapter", "full": "model"}  # the trial's folder under work/
WHAT = {"adapter": "a PEFT adapter", "merged": "a merged model", "model": "a model"}


class ExportError(ValueError):
    """Refused input: names what is wrong and the fix (exit code 2, like the CLI's other input errors)."""


@dataclass
class Plan:
    """Everything an export needs, checked: which run, where its files are, what it becomes."""

    name: str  # the sweep
    root: Path  # the sweep's folder
    row: dict[str, Any]  # the run's leaderboard row
    work: Path  # the trial's work/ folder: metrics.json, test_predictions.jsonl, adapter/ or model/
    metrics: dict[str, Any]
    cfg: TrialConfig  # the trial's settings: rendering, truncation, generation, batch size
    kind: str  # adapter | merged | model
    base: str  # the base model: an absolute folder or a hub id
    out: Path
    recommended: bool
    reason: str  # how the run was chosen
    tracking_uri: str
    force: bool = False

    @property
    def run_id(self) -> str:
        return str(self.row["run_id"])


def add(sub: Any) -> None:
    p = sub.add_parser("export", help="ship a sweep's run: adapter, merged or full model, model card, verified")
    p.add_argument("name", help="the sweep's name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="RUN_ID", help="the MLflow run id (or the trial id) to export; default: the recommended run")
    which.add_argument("--recommended", action="store_true", help="the leaderboard's recommended run (default)")
    p.add_argument("--merge", action="store_true",
                   help="LoRA/QLoRA: merge the adapter into the 16-bit base model and save one model folder")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="the folder to write (empty or new)")
    p.add_argument("--force", action="store_true", help="replace what --out holds")
    p.add_argument("--storage", default="runs/sweeps", help="where sweeps live (default runs/sweeps)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep config's, else "
                   "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sweeps import export_check, model_card

    plan = prepare(args.name, args.run, args.merge, args.out, args.force, args.storage, args.tracking_uri)
    print(f"exporting run {plan.run_id} (trial {plan.row.get('trial_id')}, {plan.metrics['method']}) of sweep "
          f"{plan.name!r} as {WHAT[plan.kind]} into {plan.out}",
          flush=True)  # fmt: skip
    write(plan)
    try:
        check = export_check.verify(plan)
    except export_check.VerifyError as exc:
        print(f"sweepboard export: error: {exc}\n{plan.out} holds an export that failed verification: do not "
              "ship it", flush=True)  # fmt: skip
        return 1
    (plan.out / "README.md").write_text(model_card.render(plan, check))
    _register(plan)
    print(f"done: {plan.out} (model card {plan.out / 'README.md'})")
    print(model_card.serve_command(plan))
    return 0


# --- checks: nothing is written until all of them pass ------------------------------------------------------

def prepare(name: str, run: str | None, merge: bool, out: Path, force: bool = False,
            storage: str = "runs/sweeps", tracking_uri: str | None = None) -> Plan:  # fmt: skip
    from tracking import mlflow_conn

    root = open_sweep(storage, name)
    if not (root / STATE_FILE).is_file():
        known = known_sweeps(root.parent, storage)
        place = storage if is_remote(storage) else root.parent
        raise ExportError(f"sweep {name!r}: no such sweep in {place}; known sweeps: "
                          f"{', '.join(known) or 'none'} (give --storage if it lives elsewhere)")  # fmt: skip
    sweep_cfg = _sweep_config(root)
    uri = mlflow_conn.tracking_uri(tracking_uri or sweep_cfg.tracking_uri)
    board = _board(name, root, uri)
    row, recommended, reason = _choose(board, run, name, root, uri)
    work = root / f"trial_{row.get('trial_id')}" / "work"
    if is_remote(storage):  # the bucket's final checkpoint: metrics, predictions, adapter or model
        work = root / f"trial_{row.get('trial_id')}" / "final"
        pull_final(root, f"trial_{row.get('trial_id')}", work)
    metrics = _model_metrics(row, work, board, name)
    method = str(metrics["method"])
    if merge and method == "full":
        raise ExportError(f"--merge: run {row['run_id']} is full fine-tuning, already a whole model with "
                          "nothing to merge: drop --merge")  # fmt: skip
    cfg = _trial_config(sweep_cfg, metrics)
    _check_lock(cfg, metrics, row)
    base = _check_base(metrics, row, cfg.cache_dir)
    _check_out(out, force, root)
    kind = "model" if method == "full" else ("merged" if merge else "adapter")
    return Plan(name, root, row, work, metrics, cfg, kind, base, out.resolve(), recommended, reason, uri, force)


def _board(name: str, root: Path, uri: str) -> dict[str, Any]:
    """The sweep's leaderboard.json, or the same document rebuilt from MLflow when it is missing (its rate
    brackets judged in the sweep's own search space, as at the sweep's end)."""
    path = root / "leaderboard" / "leaderboard.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    from leaderboard import build
    from leaderboard.exports import to_json
    from leaderboard.ranges import from_space
    from leaderboard.rank import DEFAULT_MARGIN

    state = json.loads((root / STATE_FILE).read_text())  # prepare checked that it exists
    ranges = from_space(state.get("space_source"))

    print(f"sweepboard export: no {path}; building the leaderboard from MLflow ({uri})", flush=True)
    try:
        board = build([name], uri, None, DEFAULT_MARGIN, ranges=ranges)
    except LookupError as exc:
        raise ExportError(f"sweep {name!r}: cannot build its leaderboard: {exc}") from exc
    return dict(json.loads(to_json(board.ranked, board.decision, board.warnings)))


def _choose(board: dict[str, Any], run: str | None, name: str, root: Path,
            uri: str) -> tuple[dict[str, Any], bool, str]:  # fmt: skip
    """The run's leaderboard row, whether it is the recommended run, and how it was chosen."""
    rows: list[dict[str, Any]] = board.get("rows") or []
    decision = board.get("decision") or {}
    picked = decision.get("recommended") or {}
    chosen = (f"recommended by the leaderboard, selected on validation: {decision.get('reason')}"
              if picked else "")  # fmt: skip
    if run is None:
        if not picked:
            raise ExportError(f"sweep {name!r}: the leaderboard recommends no run ({decision.get('reason')}): "
                              "give one with --run RUN_ID (see `sweepboard leaderboard NAME`)")  # fmt: skip
        run = str(picked["run_id"])
    found = [r for r in rows if run in (r.get("run_id"), r.get("trial_id"))]
    if not found:
        raise ExportError(_not_on_board(run, name, root, uri, rows, board))
    row = found[0]
    if row["run_id"] == picked.get("run_id"):
        return row, True, chosen
    return row, False, (f"chosen by hand (--run); the leaderboard, selected on validation, recommends run "
                        f"{picked.get('run_id')} ({decision.get('reason')})" if picked else "chosen by hand (--run)")  # fmt: skip


def _not_on_board(run: str, name: str, root: Path, uri: str, rows: list[dict[str, Any]],
                  board: dict[str, Any]) -> str:  # fmt: skip
    """Why `run` is not on the board: scored on another test set, or unknown."""
    shas = list(board.get("test_set_sha256") or [])
    sha = _run_test_sha(run, name, root, uri)
    if sha is not None and sha not in shas:
        return (f"--run {run}: scored on another locked test set (sha256 {sha[:12]}...) than the leaderboard "
                f"of sweep {name!r} ({', '.join(s[:12] + '...' for s in shas) or 'none'}): its quality is not "
                "comparable; export a run of this board, or rebuild the board on that test set")
    known = ", ".join(f"{r.get('run_id')} ({r.get('method')})" for r in rows[:8]) or "none"
    return (f"--run {run}: no such run on the leaderboard of sweep {name!r}; its runs (MLflow run id, method): "
            f"{known}; see `sweepboard leaderboard {name}`")


def _run_test_sha(run: str, name: str, root: Path, uri: str) -> str | None:
    """The test set hash a run outside the board was scored on: from its trial folder, else its MLflow run."""
    metrics_file = root / f"trial_{run}" / "work" / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text()).get("test_set_sha256")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tracking import names

    try:
        found = MlflowClient(uri).get_run(run)
    except MlflowException:
        return None
    if found.data.tags.get(names.TAG_SWEEP) != name:
        return None
    return found.data.tags.get(names.TAG_TEST_SHA)


def _model_metrics(row: dict[str, Any], work: Path, board: dict[str, Any], name: str) -> dict[str, Any]:
    """The trial's metrics.json, refusing a run without a model or scored on another test set."""
    run = row["run_id"]
    if row.get("role") == "baseline" or row.get("method") == "none":
        raise ExportError(f"run {run} is the baseline: the base model evaluated without fine-tuning, so there "
                          "is no fine-tuned model to export; serve the base model itself, or export a "
                          f"fine-tuned run with --run RUN_ID (see `sweepboard leaderboard {name}`)")  # fmt: skip
    folder = MODEL_OF.get(str(row.get("method")), "adapter")
    metrics_file = work / "metrics.json"
    if row.get("status") not in ("finished", "stopped") or not (work / folder).is_dir() \
            or not metrics_file.is_file():  # fmt: skip
        raise ExportError(f"run {run} ({row.get('method')}, status {row.get('status')}) has no model to export "
                          f"(no {work / folder}): it failed or was pruned before its final evaluation; export a "
                          f"finished run with --run RUN_ID (see `sweepboard leaderboard {name}`)")  # fmt: skip
    metrics: dict[str, Any] = json.loads(metrics_file.read_text())
    shas = list(board.get("test_set_sha256") or [])
    if metrics.get("test_set_sha256") not in shas or metrics.get("test_set_sha256") != row.get("test_set_sha256"):
        raise ExportError(f"run {run}: scored on locked test set {str(metrics.get('test_set_sha256'))[:12]}..., "
                          f"the leaderboard on {', '.join(s[:12] + '...' for s in shas) or 'none'}: rebuild the "
                          f"board (`sweepboard leaderboard {name}`) or export a run scored on its test set")  # fmt: skip
    return metrics


def _sweep_config(root: Path) -> Any:
    """The sweep's config as its driver saved it (sweepboard.json)."""
    from sweeps import config as sweep_config

    state = json.loads((root / STATE_FILE).read_text())
    return sweep_config.build({k: v for k, v in state["config"].items() if k != "source"}, str(root / STATE_FILE))


def _trial_config(sweep_cfg: Any, metrics: dict[str, Any]) -> TrialConfig:
    """The trial's settings as the sweep gave them (paths made absolute as its trials saw them)."""
    from sweeps.tune_run import trial_base
    from trainers.config import from_dict

    return from_dict({**trial_base(sweep_cfg), "method": metrics["method"]})


def _check_lock(cfg: TrialConfig, metrics: dict[str, Any], row: dict[str, Any]) -> None:
    """The locked test set the predictions are regenerated on must be the one the run was scored on."""
    from trainers import data as data_mod

    lock = data_mod.lock_path(cfg.data)
    try:
        _rows, sha = data_mod.verify_lock(lock)
    except ValueError as exc:
        raise ExportError(f"run {row['run_id']}: its locked test set cannot be read ({exc}); run export from the "
                          "folder the sweep ran in, with the same SWEEPBOARD_CACHE") from exc  # fmt: skip
    if sha != metrics["test_set_sha256"]:
        raise ExportError(f"the locked test set at {lock} (sha256 {sha[:12]}...) is not the one run "
                          f"{row['run_id']} was scored on ({str(metrics['test_set_sha256'])[:12]}...): run export "
                          "from the folder the sweep ran in, with the same SWEEPBOARD_CACHE")  # fmt: skip


def _check_base(metrics: dict[str, Any], row: dict[str, Any], cache_dir: str | None) -> str:
    """The base model the run was trained on, refused if its folder moved or its config or weights changed."""
    from trainers import model_id

    path, sha = metrics.get("base_model_path"), metrics.get("base_model_sha256")
    if not path:
        raise ExportError(f"run {row['run_id']}: its metrics.json records no base_model_path (the trial ran "
                          "before trials recorded their base model), so its base cannot be checked: run the "
                          "sweep again")  # fmt: skip
    if not sha:
        print(f"sweepboard export: note: base model {path} is a hub id; its revision is not checked", flush=True)
        return str(path)
    if not (Path(path) / "config.json").is_file():
        raise ExportError(f"base model folder {path} (what run {row['run_id']} was trained on) is gone: it moved "
                          "or was deleted; put it back at that path (or rebuild it: the embedded default and "
                          "builtin:tiny are rebuilt by `sweepboard train`) and export again")  # fmt: skip
    now = model_id.folder_sha256(Path(path), cache_dir)  # the trial's cache: its hash is there already
    if now != sha:
        raise ExportError(f"base model folder {path} changed since run {row['run_id']} was trained on it (sha256 "
                          f"of config and weights {now[:12]}..., the run's {str(sha)[:12]}...): restore the "
                          "original files there; an adapter applied to another base is not the model that was "
                          "scored")  # fmt: skip
    return str(path)


def _check_out(out: Path, force: bool, root: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file; give a folder to write the export into")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(f"--out {out}: exists and is not empty; give a new or empty folder, or --force to "
                              "replace what it holds")  # fmt: skip
        resolved = out.resolve()
        if resolved in (Path.cwd(), *Path.cwd().parents, root, *root.parents):
            raise ExportError(f"--out {out}: holds the working folder or the sweep itself; --force would delete "
                              "it: give a folder of its own")  # fmt: skip


# --- writing ---------------------------------------------------------------------------------------------

def write(plan: Plan) -> None:
    """Into plan.out: the adapter folder (base model recorded), the merged model, or the full model."""
    if plan.out.is_dir() and plan.force:
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)
    if plan.kind == "model":
        shutil.copytree(plan.work / "model", plan.out, dirs_exist_ok=True)
    elif plan.kind == "adapter":
        for name in ADAPTER_FILES:
            shutil.copy2(plan.work / "adapter" / name, plan.out / name)
        config_file = plan.out / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = plan.base  # the trial wrote the path as it was given, maybe relative
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _tokenizer(plan.base).save_pretrained(plan.out)  # so DIR alone names how prompts are tokenized
    else:
        _merge(plan)


def _merge(plan: Plan) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    print(f"merging: loading the base model {plan.base} in bfloat16 (unquantized)...", flush=True)
    base = AutoModelForCausalLM.from_pretrained(plan.base, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, str(plan.work / "adapter")).merge_and_unload()
    merged.save_pretrained(plan.out)
    _tokenizer(plan.base).save_pretrained(plan.out)
    print(f"merging: saved the merged bfloat16 model in {time.perf_counter() - t0:.0f}s", flush=True)


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _register(plan: Plan) -> None:
    """The export, logged to its run as an MLflow model and registered under the sweep's name with the alias
    `champion` (tracking/registry.py): `models:/NAME@champion` loads it."""
    from mlflow import MlflowClient

    from tracking import names
    from tracking.registry import register_export

    tags = {names.TAG_TEST_SHA: str(plan.metrics["test_set_sha256"]),
            names.TAG_TEST_QUALITY: str(plan.metrics["test_quality"]),
            names.TAG_COST: str(plan.metrics["cost_usd"])}  # fmt: skip
    print("MLflow registry: logging the model to its run and registering it…", flush=True)
    kind = "adapter" if plan.kind == "adapter" else "model"  # a merged adapter is a whole model
    version = register_export(MlflowClient(plan.tracking_uri), plan.run_id, plan.out, kind, plan.base, plan.name,
                              tags, champion=True)  # fmt: skip
    print(f"MLflow registry: {plan.name} version {version}, alias {names.ALIAS_CHAMPION} "
          f"(load it with models:/{plan.name}@{names.ALIAS_CHAMPION})", flush=True)


def export_hint(sweep: str, recommended: dict[str, Any] | None, reason: str,
                storage: str = "runs/sweeps") -> str | None:  # fmt: skip
    """The closing line of a sweep: the command that ships its recommended run, or why there is none."""
    if not recommended:
        return None
    if recommended.get("method") == "none":
        return f"nothing to export: the recommended run is the base model without fine-tuning ({reason})"
    where = "" if storage == "runs/sweeps" else f" --storage {storage}"
    adapter = recommended.get("method") in ("lora", "qlora")
    return (f"ship it: make export NAME={sweep} OUT=exports/{sweep}{' [MERGE=1]' if adapter else ''}  "
            f"(sweepboard export {sweep}{where}{' [--merge]' if adapter else ''} --out exports/{sweep})")
