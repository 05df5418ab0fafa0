"""The process group DeepSpeed needs, one process or several.

Under `torchrun` (or the `deepspeed` launcher) WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT are set and `deepspeed.init_distributed` joins them. A plain single
process has none of these, and DeepSpeed would then try MPI discovery (mpi4py); instead
we open a one-member gloo group on an in-memory store (no port) and set LOCAL_RANK=0,
which `deepspeed.initialize` insists on. On the CPU the backend is gloo (DeepSpeed's cpu
accelerator would otherwise ask for oneCCL); on an accelerator, its own (nccl, ...).

On the CPU, DeepSpeed's backend would also compile its shared-memory all-reduce kernel
(g++, about 45 s here, again whenever the virtual environment moves) the first time a
process group starts. Only inference's tensor-parallel all-reduce uses it; training and
ZeRO never do, so it is marked unavailable and never built.
"""

from __future__ import annotations

import os

import deepspeed
import torch
import torch.distributed as dist


def initialize() -> None:
    """Join (or create) the process group; idempotent."""
    if dist.is_initialized():
        return
    accelerator = deepspeed.get_accelerator()
    backend = "gloo" if accelerator.device_name() == "cpu" else None
    if backend == "gloo":
        skip_shared_memory_kernel()
    if "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("LOCAL_RANK", "0")
        dist.init_process_group(
            backend or accelerator.communication_backend_name(),
            store=dist.HashStore(),
            rank=0,
            world_size=1,
        )
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def skip_shared_memory_kernel() -> None:
    """Keep DeepSpeed from compiling its CPU inference all-reduce kernel (see above)."""
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over the processes, in float64."""
    if world_size() == 1:
        return list(values)
    device = deepspeed.get_accelerator().current_device_name()
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def share_int(value: int) -> int:
    """Rank 0's `value`, on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])
