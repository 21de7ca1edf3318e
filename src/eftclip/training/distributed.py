"""Data-parallel setup read from the environment, as open_clip's trainer does.

Under ``torchrun`` (or any launcher that sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``,
and under SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``) the process
group is initialised with NCCL on CUDA and gloo on CPU.  Without those variables
the run is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from eftclip.errors import EftclipError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int  # global rank, 0..world_size-1
    local_rank: int  # rank on this node (picks the GPU)
    world_size: int  # number of processes
    initialized_here: bool  # whether setup_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_from_env(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun or SLURM variables; (0, 0, 1) when absent."""
    env = dict(os.environ) if env is None else env
    for world_key, rank_key, local_key in (
        ("WORLD_SIZE", "RANK", "LOCAL_RANK"),
        ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
    ):
        if world_key in env and rank_key in env:
            try:
                world = int(env[world_key])
                rank = int(env[rank_key])
                local = int(env.get(local_key, "0"))
            except ValueError as exc:
                raise EftclipError(f"environment: {world_key}/{rank_key} are not integers ({exc})") from exc
            if world < 1 or not 0 <= rank < world:
                raise EftclipError(f"environment: bad {rank_key}={rank} / {world_key}={world}")
            return rank, local, world
    return 0, 0, 1


def setup_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched with several processes.

    ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; under several
    processes on CUDA each takes ``cuda:LOCAL_RANK``.  Returns the info and the
    torch device this process computes on.
    """
    rank, local_rank, world = world_from_env()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EftclipError(f"--device {device}: CUDA is not available on this machine")
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    created = False
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ and "SLURM_PROCID" in os.environ:
            raise EftclipError("SLURM launch: set MASTER_ADDR and MASTER_PORT for the process group")
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        created = True
    return DistInfo(rank, local_rank, world, created), torch_device


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over processes (identity for one process)."""
    if not info.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
