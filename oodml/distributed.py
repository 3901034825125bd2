"""torch.distributed support: several processes (``torchrun --nproc-per-node N``) share the embedding work.

Each process embeds its share of the missing images and writes its own cache
shards; the shards on the shared cache directory are how results meet, so
after a barrier every process reads the same complete set.  Nothing here runs
unless a process group exists (or ``WORLD_SIZE`` > 1 asks for one).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def local_device_index() -> int | None:
    """The GPU index of this process under torchrun (``LOCAL_RANK``), else None."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None and rank_world()[1] > 1 else None


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, else gloo).

    Returns True when running distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True
