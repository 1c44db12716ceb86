"""A training checkpoint: the trainable weights, the optimizer and scheduler, the step and the RNG.

Written to a sibling folder, then renamed into place, so a kill mid-write leaves the previous checkpoint
whole. One worker, or several data-parallel (DDP) workers whose weights and optimizer are replicas, write
one copy from rank 0: `trainable.pt` (the adapter for LoRA) and `optim.pt`, the same files whatever the
number of workers, so a trial can resume on another worker count. FSDP-sharded full fine-tuning writes
each worker's shard through torch.distributed.checkpoint into `shards/` instead: no worker ever holds the
whole model and optimizer state (16 bytes a parameter for fp32 AdamW), and DCP reshards on load.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainers import distributed


def save(ckpt_dir: Path, model: nn.Module, opt: Any, sched: Any, state: dict[str, Any]) -> None:
    world = distributed.current()
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier(world)
    extra = {"scheduler": sched.state_dict(), "rng": _rng_state()}
    if distributed.sharded(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        weights, optim = get_state_dict(model, opt)
        dcp.save({"model": weights, "optim": optim}, checkpoint_id=str(tmp / "shards"))
    elif world.main:
        net = distributed.unwrap(model)
        trainable = {n: p.detach().cpu() for n, p in net.named_parameters() if p.requires_grad}
        torch.save(trainable, tmp / "trainable.pt")
        extra["optimizer"] = opt.state_dict()
    if world.main:
        torch.save(extra, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(state))
        old = ckpt_dir.with_name(ckpt_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if ckpt_dir.exists():
            ckpt_dir.rename(old)
        tmp.rename(ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(world)  # no worker trains on while the checkpoint it belongs to is half written


def load(ckpt_dir: Path, model: nn.Module, opt: Any, sched: Any) -> dict[str, Any]:
    extra = torch.load(ckpt_dir / "optim.pt", weights_only=False)
    if distributed.sharded(model):
        if not (ckpt_dir / "shards").is_dir():
            raise ValueError(f"{ckpt_dir}: written by one worker, so not sharded; resume with workers: 1")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        weights, optim = get_state_dict(model, opt)
        dcp.load({"model": weights, "optim": optim}, checkpoint_id=str(ckpt_dir / "shards"))  # in place
        set_state_dict(model, opt, model_state_dict=weights, optim_state_dict=optim)
    else:
        if not (ckpt_dir / "trainable.pt").is_file():
            raise ValueError(f"{ckpt_dir}: sharded by several workers; resume with the same resources.workers")
        net = distributed.unwrap(model)
        trainable = torch.load(ckpt_dir / "trainable.pt", weights_only=True)
        missing = set(n for n, p in net.named_parameters() if p.requires_grad) - set(trainable)
        if missing:
            raise ValueError(
                f"{ckpt_dir}: checkpoint does not match this trial's model (missing {sorted(missing)[:3]})"
            )
        net.load_state_dict(trainable, strict=False)
        opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"])
    return json.loads((ckpt_dir / "state.json").read_text())


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
