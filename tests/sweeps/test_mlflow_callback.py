"""MLflowTrialLogger with a real Ray Tune and a real MLflow (a SQLite file). The same callback against an
`mlflow server` over HTTP, killed mid-sweep and synced afterwards: test_mlflow_callback_server.py."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from sweeps.mlflow_callback import MLflowTrialLogger
from sweeps.reconcile import run_name, trial_params
from tracking import mlflow_store as store
from tracking.names import (
    TAG_DATASET_CONTEXT,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_METHOD,
    TAG_METRIC,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TEST_SHA,
    TAG_TRIAL_ID,
)

SHA = "d" * 64
SWEEP_ID = "5eed" * 8
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Shaped as a sweep's Tune config: the searched values at the top (with Optuna's "lora.rank" copies), the
# fixed settings under sweepboard_trial (sweeps/tune_run.py param_space).
LORA = {"method": "lora", "rank": 8, "alpha": 16, "target_modules": "q_proj,v_proj",
        "lora_dropout": 0.05, "learning_rate": 2e-4, "lora.rank": 8,
        "sweepboard_trial": {"steps": 3, "batch_size": 2, "data": {"source": "builtin:dates", "lock_dir": "/l"}}}
FULL = {"method": "full", "rank": None, "alpha": None, "learning_rate": 1e-5, "sweepboard_trial": {"steps": 3}}
BASELINE = {"method": "none", "sweepboard_trial": {"steps": 0}}


def with_steps(config: dict[str, Any], steps: int) -> dict[str, Any]:
    return {**config, "sweepboard_trial": {**config["sweepboard_trial"], "steps": steps}}


def trainable(config: dict[str, Any]) -> None:
    """A trial shaped like trainers' run_trial under Tune: step reports with checkpoints, then one final."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            start = json.loads(Path(folder, "state.json").read_text())["step"]
    # Keys one config of a grid lacks arrive as None (see _grid).
    steps = int(config["sweepboard_trial"]["steps"])
    quality = float(config.get("quality") or 0.5)
    for step in range(start + 1, steps + 1):
        time.sleep(float(config.get("sleep") or 0.0))
        if config.get("fail_at") == step:
            raise RuntimeError(f"boom at step {step}")
        metrics = {"step": step, "train_loss": 2.0 / step, "val_quality": quality * step / steps,
                   "tokens_trained": 64 * step, "cost_usd": 0.01 * step, "learning_rate": 1e-4}
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"step": step}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
    final = {"phase": "final", "step": steps, "test_quality": quality, "val_quality": quality, "n_test": 20,
             "cost_usd": 0.01 * steps + 0.005, "device_hours": 0.1, "wall_seconds": 1.5,
             "tokens_per_second": 99.0, "peak_memory_mb": 300.0, "trainable_params": 1000,
             "total_params": 10_000, "adapter_mb": 0.5,
             "steps_done": steps, "status": "finished", "test_set_sha256": SHA, "metric": "exact_match",
             "method": config["method"], "n_train": 50, "n_val": 10, "val_set_sha256": "e" * 64,
             "precision": "fp32"}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "state.json").write_text(json.dumps({"step": steps}))
        Path(folder, "metrics.json").write_text(json.dumps(final))
        Path(folder, "test_predictions.jsonl").write_text(json.dumps({"expected": "1", "score": 1.0}) + "\n")
        if config["method"] in ("lora", "qlora"):
            Path(folder, "adapter").mkdir()
            Path(folder, "adapter", "adapter_config.json").write_text("{}")
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(folder))


class Recorder(tune.Callback):
    """Writes what Tune tells callbacks to a file, so a restored Tuner's (unpickled) copy appends to it."""

    def __init__(self, path: Path, interrupt_when_reporting: int = 0) -> None:
        # Interrupt the sweep once this many trials have reported twice each (0: never).
        self.path, self.interrupt_when_reporting = path, interrupt_when_reporting
        self.results: dict[str, int] = {}

    def _write(self, **event: Any) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps({**event, "callback": id(self)}) + "\n")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(event="start", trial=trial.trial_id, checkpoint=bool(trial.checkpoint),
                    last_step=(trial.last_result or {}).get("step"))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        checkpoint = trial.checkpoint.path if trial.checkpoint else None
        self._write(event="complete", trial=trial.trial_id, checkpoint=checkpoint)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.results[trial.trial_id] = self.results.get(trial.trial_id, 0) + 1
        reporting = sum(n >= 2 for n in self.results.values())
        marker = self.path.with_suffix(".interrupted")
        if 0 < self.interrupt_when_reporting <= reporting and not marker.exists():
            marker.touch()  # the restored copy of this callback must not interrupt again
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own "stop and save" signal, as Ctrl+C is

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    # Workers import this module to unpickle `trainable`.
    if ray.is_initialized():
        ray.shutdown()  # never inherit another module's Ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": f"{REPO}:{HERE}"}})
    yield
    ray.shutdown()


def tuner(tmp_path: Path, space: dict[str, Any], callbacks: list[tune.Callback],
          **tune_config: Any) -> tune.Tuner:
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(**{"reuse_actors": True, "max_concurrent_trials": 2, **tune_config}),
        run_config=tune.RunConfig(name="demo", storage_path=str(tmp_path / "ray"), callbacks=callbacks,
                                  verbose=0),
    )


def grid(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """One trial per config, keys at the top level of trial.config (a grid over whole dicts nests them).

    Not for a restored sweep unless param_space= is passed to Tuner.restore again: tuner.pkl keeps only
    placeholders for functions, and trials created after the restore get those as config values.
    """
    keys = sorted({key for config in configs for key in config})
    table = {key: [config.get(key) for config in configs] for key in keys}

    def pick(key: str) -> Any:
        return tune.sample_from(lambda spec: table[key][spec["config"]["i"]])

    return {"i": tune.grid_search(list(range(len(configs)))), **{key: pick(key) for key in keys}}


def sweep(tmp_path: Path, uri: str) -> tuple[MlflowClient, str, MLflowTrialLogger]:
    client = MlflowClient(tracking_uri=uri)
    parent = store.start_sweep_run(client, "demo", SWEEP_ID, {"budget_usd": 1.0}, {TAG_TEST_SHA: SHA})
    return client, parent, MLflowTrialLogger(uri, "demo", SWEEP_ID, parent, "feedc0de", {TAG_TEST_SHA: SHA})


def trial_runs(client: MlflowClient) -> dict[str, Run]:
    """Trial and baseline runs by trial id; fails if any trial id has two runs."""
    experiment_id = store.ensure_experiment(client, "demo")
    runs = [r for r in client.search_runs([experiment_id]) if r.data.tags[TAG_ROLE] != "sweep"]
    by_trial = {r.data.tags[TAG_TRIAL_ID]: r for r in runs}
    assert len(by_trial) == len(runs), "a trial has more than one MLflow run"
    return by_trial


def steps_of(client: MlflowClient, run: Run, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def test_one_run_per_trial_with_params_curves_finals_and_failures(tmp_path):
    client, parent, logger = sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    configs: list[dict[str, Any]] = [LORA, FULL, BASELINE, {**LORA, "rank": 16, "fail_at": 2}]
    results = tuner(tmp_path, grid(configs), [logger]).fit()
    runs = trial_runs(client)
    finals = [results[n] for n in range(len(results))]
    by_index = {(r.config or {})["i"]: runs[(r.metrics or {})["trial_id"]] for r in finals}
    assert len(runs) == 4 == len(by_index)

    lora, full, baseline, failed = (by_index[i] for i in range(4))
    assert lora.info.run_name == f"lora-r8-{lora.data.tags[TAG_TRIAL_ID]}"
    assert full.info.run_name.startswith("full-lr1e-05-")
    # Every setting: the searched ones, the fixed ones (defaults too), the precision the trial resolved "auto"
    # to; not Optuna's "lora.rank" copy, not settings full fine-tuning does not use.
    assert {"method": "lora", "rank": "8", "alpha": "16.0", "lora_dropout": "0.05", "steps": "3",
            "target_modules": "q_proj,v_proj", "learning_rate": "0.0002", "batch_size": "2", "grad_accum": "1",
            "max_seq_len": "256", "seed": "0", "model": "smollm2-135m", "data.source": "builtin:dates",
            "data.lock_dir": "/l", "data.metric": "exact_match", "data.prompt_template": "{prompt}",
            "precision": "fp32"}.items() <= lora.data.params.items()
    assert "lora.rank" not in lora.data.params and "out" not in lora.data.params
    assert {"method": "full", "learning_rate": "1e-05", "steps": "3", "batch_size": "8"}.items() <= \
        full.data.params.items()
    assert not {"rank", "alpha", "lora_dropout", "target_modules"} & set(full.data.params)
    assert not {"steps", "learning_rate", "rank"} & set(baseline.data.params)
    for run, steps in ((lora, 3), (full, 3), (baseline, 0)):
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags[TAG_STATUS] == "finished"
        assert tags[TAG_PARENT] == parent and tags[TAG_SWEEP] == "demo" and tags[TAG_GIT_COMMIT] == "feedc0de"
        assert tags[TAG_TEST_SHA] == SHA and tags[TAG_METRIC] == "exact_match" and tags[TAG_SWEEP_ID] == SWEEP_ID
        assert run.data.metrics["test_quality"] == 0.5 and run.data.metrics["n_train"] == 50
        # The locked test set and the validation set as dataset inputs (no train hash in these metrics).
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert {c: d.digest for c, d in inputs.items()} == {"test": SHA[:12], "validation": "e" * 12}
        assert inputs["test"].name == "dates-locked-test" and '"num_rows": 20' in inputs["test"].profile
        assert all(i.tags[0].key == TAG_DATASET_CONTEXT for i in run.inputs.dataset_inputs)
        assert run.data.metrics["cost_usd"] == pytest.approx(0.01 * steps + 0.005)  # the final, not the curve
    assert lora.data.tags[TAG_ROLE] == "trial" and baseline.data.tags[TAG_ROLE] == "baseline"
    assert baseline.data.tags[TAG_METHOD] == "none" and baseline.info.run_name.startswith("baseline-")
    assert steps_of(client, lora, "train_loss") == [1, 2, 3]
    # The curve, then the final report; the final metric is not logged again: it holds that value already.
    assert steps_of(client, lora, "val_quality") == [1, 2, 3, 3]
    assert "learning_rate" not in lora.data.metrics  # not a curve
    artifacts = {a.path for a in client.list_artifacts(lora.info.run_id)}
    assert artifacts == {"metrics.json", "test_predictions.jsonl", "adapter"}
    artifacts = {a.path for a in client.list_artifacts(full.info.run_id)}
    assert artifacts == {"metrics.json", "test_predictions.jsonl"}

    assert failed.info.status == "FAILED" and failed.data.tags[TAG_STATUS] == "failed"
    assert "RuntimeError: boom at step 2" in failed.data.tags[TAG_ERROR]
    assert failed.data.metrics["cost_usd"] == pytest.approx(0.01)  # what it spent until it failed
    assert "test_quality" not in failed.data.metrics


def test_asha_stopped_trials_are_pruned_with_their_cost(tmp_path):
    client, _, logger = sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    # One at a time, best first: every later trial is below the rung cutoff at its first report.
    configs = [{**with_steps(LORA, 4), "quality": q} for q in (0.9, 0.2, 0.1)]
    # max_t beyond the last step: ASHA stops a trial whose step reaches max_t, before its final report.
    asha = ASHAScheduler(metric="val_quality", mode="max", time_attr="step", max_t=5, grace_period=1,
                         reduction_factor=2)
    tuner(tmp_path, grid(configs), [logger], scheduler=asha, max_concurrent_trials=1).fit()
    runs = sorted(trial_runs(client).values(), key=lambda r: r.info.start_time)
    assert [r.data.tags[TAG_STATUS] for r in runs] == ["finished", "pruned", "pruned"]
    for run in runs[1:]:
        assert run.info.status == "FINISHED" and "test_quality" not in run.data.metrics
        last_step = max(steps_of(client, run, "train_loss"))
        assert last_step < 4 and run.data.metrics["cost_usd"] == pytest.approx(0.01 * last_step)
        assert not client.list_artifacts(run.info.run_id)


def test_restored_sweep_logs_into_the_same_runs(tmp_path):
    client, _, logger = sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    recorder = Recorder(tmp_path / "events.jsonl", interrupt_when_reporting=2)
    space = {**with_steps(LORA, 6), "sleep": 0.4, "quality": tune.grid_search([0.5, 0.6, 0.7])}
    results = tuner(tmp_path, space, [logger, recorder]).fit()
    assert (tmp_path / "events.jsonl").with_suffix(".interrupted").exists()
    before = trial_runs(client)
    assert len(before) == 2  # the two trials that had started; the third was still pending
    for run in before.values():
        assert run.info.status == "KILLED" and run.data.tags[TAG_STATUS] == "interrupted"
    assert all((results[n].metrics or {}).get("phase") != "final" for n in range(len(results)))

    path = str(tmp_path / "ray" / "demo")
    assert tune.Tuner.can_restore(path)
    restored = tune.Tuner.restore(path, trainable, resume_unfinished=True).fit()
    assert not restored.errors
    after = trial_runs(client)
    assert len(after) == 3 and set(before) <= set(after)
    for trial_id, run in after.items():
        assert run.info.status == "FINISHED" and run.data.tags[TAG_STATUS] == "finished"
        assert set(steps_of(client, run, "train_loss")) == {1, 2, 3, 4, 5, 6}
        assert len(run.inputs.dataset_inputs) == 2  # test and validation, once each
        if trial_id in before:
            assert run.info.run_id == before[trial_id].info.run_id

    # What Ray did, as seen by a callback: the restored Tuner brings back its own unpickled copy, calls
    # on_trial_start again for each resumed trial, with the checkpoint and last result it had saved.
    events = recorder.events()
    first_copy = events[0]["callback"]
    starts = [e for e in events if e["event"] == "start"]
    resumed = [e for e in starts if e["callback"] != first_copy and e["trial"] in before]
    assert {e["trial"] for e in resumed} == set(before)
    assert all(e["checkpoint"] and e["last_step"] for e in resumed)
    completes = [e for e in events if e["event"] == "complete"]
    assert len(completes) == 3
    assert all(Path(e["checkpoint"]).name.startswith("checkpoint_") for e in completes)


def test_params_of_a_real_sweep_config_hold_every_setting(tmp_path, monkeypatch):
    """The Tune config a sweep passes (param_space on sweeps/configs/smoke.yaml), with searched values on top."""
    from sweeps import config as sweep_config
    from sweeps.tune_run import param_space, trial_base

    monkeypatch.chdir(tmp_path)
    cfg = sweep_config.load(str(REPO / "sweeps" / "configs" / "smoke.yaml"), {})
    space = param_space(cfg, trial_base(cfg))
    lora = trial_params({**space, "method": "lora", "rank": 8, "alpha": 16, "target_modules": "attention+mlp",
                         "learning_rate": 3e-4, "lora.rank": 8, "lora.alpha": 16})
    assert {"method": "lora", "rank": 8, "alpha": 16.0, "target_modules": "attention+mlp", "learning_rate": 3e-4,
            "model": "builtin:tiny", "steps": 6, "batch_size": 4, "grad_accum": 1, "max_seq_len": 256, "seed": 0,
            "eval_every": 2, "max_new_tokens": 12, "data.source": "builtin:dates", "data.metric": "exact_match",
            "data.prompt_template": "{prompt}", "data.test_size": 40, "data.val_size": 20,
            "data.seed": 1234}.items() <= lora.items()
    assert lora["data.lock_dir"].startswith(str(tmp_path))  # where the locked test set lives
    # Not: Optuna's copies, the sweep's own keys, where the trial writes, an "auto" precision (its metrics.json
    # says what it resolved to), unset values.
    assert not {"lora.rank", "sweepboard_sweep", "sweepboard_root", "out", "cache_dir", "precision"} & set(lora)
    assert None not in lora.values()
    full = trial_params({**space, "method": "full", "learning_rate": 1e-5})
    assert full["learning_rate"] == 1e-5 and not {"rank", "alpha", "target_modules", "lora_dropout"} & set(full)
    baseline = trial_params({"method": "none", "sweepboard_trial": space["sweepboard_trial"]})
    assert baseline["model"] == "builtin:tiny" and not {"steps", "learning_rate", "batch_size"} & set(baseline)


def test_long_values_are_cut_visibly_and_names_tell_runs_apart():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from tracking.record import param_value

    long = param_value("x" * (MAX_PARAM_VAL_LENGTH + 50))
    assert long is not None and len(long) == MAX_PARAM_VAL_LENGTH and long.endswith("…")
    assert param_value(["q_proj", "v_proj"]) == "q_proj,v_proj" and param_value(None) is None
    assert run_name(LORA, "t1") == "lora-r8-t1" and run_name(FULL, "t2") == "full-lr1e-05-t2"
    assert run_name(BASELINE, "t3") == "baseline-t3" and run_name({}, "t4") == "trial-t4"


def test_a_failure_report_ended_by_a_stopper_is_failed_and_error_text_is_plain() -> None:
    from sweeps.reconcile import _plain, completed, interrupted

    outcome = completed({"phase": "failed", "error": "RuntimeError: boom", "cost_usd": 0.25})
    assert outcome.status == "failed" and outcome.error == "RuntimeError: boom"
    assert outcome.final.get("cost_usd") == 0.25  # its cost still counts
    assert completed({"phase": "train", "cost_usd": 0.1}).status == "pruned"
    # Stopped by the budget, then evaluated (a test score): apart from one interrupted before its evaluation.
    stopped = completed({"phase": "final", "status": "stopped", "test_quality": 0.4, "cost_usd": 0.2})
    assert stopped.status == "stopped" and stopped.artifacts and store.mlflow_status("stopped") == "FINISHED"
    cut = interrupted({"phase": "train", "step": 3, "cost_usd": 0.1, "test_quality": 0.9})
    assert cut.status == "interrupted" and cut.final == {"cost_usd": 0.1} and not cut.artifacts
    assert store.mlflow_status("interrupted") == "KILLED"
    assert _plain("\x1b[36mray::ImplicitFunc.train()\x1b[39m failed") == "ray::ImplicitFunc.train() failed"
