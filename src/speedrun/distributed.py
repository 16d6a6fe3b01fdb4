"""Data-parallel training through PyTorch's own engine (torchrun + DistributedDataParallel).

`torchrun --nproc_per_node=N -m speedrun train ...` starts N processes; each
finds its rank in the environment torchrun sets. Gloo carries the gradients on
CPUs, NCCL on CUDA GPUs. Every rank draws the same global batch from the same
seeded generator and trains on its own share of the micro-batches, so the
global batch (batch_size x grad_accum) and the result do not depend on the
number of processes. Rank 0 alone logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives' tensors live (NCCL wants them on the GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_environment() -> Dist:
    """The rank and world size torchrun set, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(d: Dist, device: torch.device) -> Dist:
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return replace(d, device=str(device))


def close(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(d: Dist, *flags: bool):
    """Each flag true on every rank if it is true on any (stop decisions all ranks must
    share), in one collective; a single flag comes back as a bool, several as a tuple."""
    if d.enabled:
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=d.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flags = tuple(bool(x) for x in t.tolist())
    return flags[0] if len(flags) == 1 else tuple(flags)


def mean(d: Dist, value: float) -> float:
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float32, device=d.device)
    dist.all_reduce(t)
    return t.item() / d.world


def share(d: Dist, obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_first(d: Dist, build):
    """`build()` on rank 0, then on the other ranks: what it writes to disk (a prepared
    dataset) is written once, then read by all. An error on rank 0 stops every rank
    (the others would otherwise wait for it until the process group's timeout, 30 min)."""
    if not d.enabled:
        return build()
    if d.is_main:
        try:
            result = build()
        except Exception as e:
            share(d, f"{type(e).__name__}: {e}")
            raise
        share(d, None)
        return result
    failure = share(d, None)
    if failure:
        raise RuntimeError(f"rank 0 failed to set up the run ({failure})")
    return build()
