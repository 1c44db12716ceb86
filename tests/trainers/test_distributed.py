"""One trial on two workers (gloo, 1 CPU thread each, spawned here as a launcher would) against the same
trial on one: the same global batch gives the same loss curve. LoRA runs data-parallel (DDP), full
fine-tuning sharded (FSDP2). The sweep's Ray Train path is tested in tests/sweeps/test_workers.py.

Tolerance: fp32, no dropout; the curves agree to 1e-5 relative (measured: 1.1e-7 at worst over 6 steps,
both methods). Two workers add their partial sums in another order than one worker does, and AdamW
amplifies those last-bit differences a little each step.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from trainers import run_trial

TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, config: dict[str, Any], curve_file: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        curve: list[dict[str, Any]] = []
        metrics = run_trial(config, report=lambda m, _ckpt: curve.append(m) and False)
        if rank == 0:
            Path(curve_file).write_text(json.dumps({"curve": curve, "metrics": metrics}))
    finally:
        dist.destroy_process_group()


def _two_workers(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "curve-2.json"
    mp.spawn(_worker, args=(2, _free_port(), config, str(out)), nprocs=2)
    return json.loads(out.read_text())


def _one_worker(config: dict[str, Any]) -> dict[str, Any]:
    curve: list[dict[str, Any]] = []
    metrics = run_trial(config, report=lambda m, _ckpt: curve.append(m) and False)
    return {"curve": curve, "metrics": metrics}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_workers_train_the_same_curve_as_one(method: str, tiny_config: dict[str, Any], tmp_path: Path) -> None:
    config = {**tiny_config, "method": method, "precision": "fp32", "lora_dropout": 0.0, "threads": 1,
              "steps": 6, "eval_every": 2, "batch_size": 4}  # fmt: skip
    one = _one_worker({**config, "out": str(tmp_path / "one")})
    two = _two_workers({**config, "out": str(tmp_path / "two")}, tmp_path)

    assert [p["step"] for p in two["curve"]] == [p["step"] for p in one["curve"]] == [2, 4, 6]
    for a, b in zip(one["curve"], two["curve"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=TOLERANCE), (a, b)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=TOLERANCE), (a, b)
        assert b["tokens_trained"] == a["tokens_trained"]  # the whole global batch, counted over workers
    m1, m2 = one["metrics"], two["metrics"]
    assert (m1["workers"], m2["workers"]) == (1, 2)
    assert m2["val_quality"] == pytest.approx(m1["val_quality"], abs=1 / m1["n_val"])
    # Rank 0 wrote the trial's files once: the predictions of every test example (split over the
    # workers, gathered back), and the final model in Hugging Face format.
    rows = (tmp_path / "two" / "test_predictions.jsonl").read_text().splitlines()
    assert len(rows) == m2["n_test"]
    shipped = tmp_path / "two" / ("adapter" if method == "lora" else "model")
    assert any(shipped.glob("*.safetensors"))
    assert not (tmp_path / "two" / "checkpoint").exists()
    if method == "full":
        # The gathered FSDP shards load back as a plain model whose weights are the one-worker model's.
        from transformers import AutoModelForCausalLM

        a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model").state_dict()
        b = AutoModelForCausalLM.from_pretrained(shipped).state_dict()
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-3, worst
        assert torch.equal(b["lm_head.weight"], b["model.embed_tokens.weight"])  # still tied


def test_a_two_worker_full_trial_resumes_from_its_sharded_checkpoint(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    """FSDP writes each worker's shard (torch.distributed.checkpoint); a restarted pair continues from it."""
    config = {**tiny_config, "method": "full", "precision": "fp32", "threads": 1, "steps": 6, "eval_every": 2,
              "out": str(tmp_path / "two")}  # fmt: skip
    stopped = {**config, "steps": 6}
    os.environ["SWEEPBOARD_FAULT"] = "error@step=5,method=full"
    try:
        with pytest.raises(Exception, match="injected fault"):
            _two_workers(stopped, tmp_path)
    finally:
        del os.environ["SWEEPBOARD_FAULT"]
    ckpt = tmp_path / "two" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4
    assert (ckpt / "shards").is_dir() and not (ckpt / "trainable.pt").exists()
    resumed = _two_workers(config, tmp_path)
    # The checkpoint's own point first (a restarted worker group reports it again, since Ray Train may
    # have lost it with the dead workers), then step 6: steps 1-4 were not trained again.
    assert [p["step"] for p in resumed["curve"]] == [4, 6]
    assert resumed["curve"][0]["elapsed_seconds"] == state["elapsed_seconds"]
    assert resumed["metrics"]["steps_done"] == 6
