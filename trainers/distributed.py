"""A trial on several workers: who this process is, how its model is wrapped, and the few collectives.

Whoever starts the workers (Ray Train's TorchTrainer in a sweep, torchrun, or a test's spawned processes)
initialises torch.distributed first; a trial only asks what it was given. One process (no process group)
is world size 1, and every helper here is then the identity, so the single-process path is unchanged.

Wrapping, by method:
- LoRA and QLoRA are data-parallel (DistributedDataParallel): the trainable adapters are a few MB, each
  worker keeps the whole frozen base, and one all-reduce of the adapter gradients per step is all the
  traffic. Sharding a frozen base would buy memory at the price of all-gathering it every forward.
- Full fine-tuning shards parameters, gradients and optimizer state with PyTorch's FSDP2 (`fully_shard`,
  one unit per decoder layer plus the root), not DeepSpeed ZeRO-3 through accelerate: FSDP2 is part of
  torch (no extra build), runs on gloo on CPU (measured here: forward, backward, clipping, AdamW,
  state-dict gathering and synced generation on 2 CPU workers), and its state dicts load back through
  torch.distributed.checkpoint without a framework of its own around the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes the trial's files and reports; the others compute."""
        return self.rank == 0


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def wrap(model: nn.Module, method: str, world: World, device: str) -> nn.Module:
    """The model as this trial trains it: itself on one worker; DDP for adapters, FSDP2 for full."""
    if world.size == 1 or method == "none":
        return model
    if method == "full":
        from torch.distributed.fsdp import fully_shard

        causal: Any = getattr(model, "get_base_model", lambda: model)()
        for layer in _decoder_layers(causal):
            fully_shard(layer)
        fully_shard(model)  # the root: embeddings, final norm and head (tied to the embeddings or not)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if device == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> Any:
    """The module under DDP (FSDP2 wraps in place: the model is its own module)."""
    return getattr(model, "module", model)


def sharded(model: nn.Module) -> bool:
    """FSDP2: every forward is a collective, so all workers run the same number of them."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def all_sum(values: list[float], world: World) -> list[float]:
    """Sums over the workers of a few numbers (losses, counts), in float64 so counts stay exact."""
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def agree(flag: bool, world: World) -> bool:
    """Rank 0's answer, for every worker (whether to stop: only rank 0 asks the budget)."""
    if world.size == 1:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def gather(items: list[Any], world: World) -> list[list[Any]]:
    """Every worker's list, on every worker, in rank order."""
    if world.size == 1:
        return [items]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, items)
    return out


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shard(order: list[int], world: World, equal: bool) -> list[tuple[int, bool]]:
    """This worker's share of `order` (every size-th item from its rank), as (index, counted). With `equal`
    every worker gets as many items (the short ones repeat their first, uncounted), so workers whose every
    forward is a collective (FSDP) run as many batches as each other."""
    mine = [(i, True) for i in order[world.rank :: world.size]]
    if equal:
        longest = -(-len(order) // world.size)
        filler = mine[0][0] if mine else order[0]
        mine += [(filler, False)] * (longest - len(mine))
    return mine


def _decoder_layers(causal: Any) -> list[nn.Module]:
    decoder = causal.get_decoder() if hasattr(causal, "get_decoder") else None
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if layers is None:
        raise ValueError(
            f"resources.full.workers > 1: cannot find the decoder layers of {type(causal).__name__} to shard "
            "them; use workers: 1 for full fine-tuning of this model"
        )
    return list(layers)
