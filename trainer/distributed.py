"""Process group and device setup from torchrun's environment, and the few collectives used.

Every helper degrades to the single-process case, so the rest of the trainer calls them
unconditionally.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.distributed as dist

from actgen.shards import runtime

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where this process runs.

    Attributes:
        device: the torch device this process trains on.
        rank, world_size, local_rank: torchrun's RANK / WORLD_SIZE / LOCAL_RANK (0 / 1 / 0 alone).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: Literal["auto", "cpu", "cuda"], local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available, this rank's GPU; asking for ``cuda`` without one is an error."""
    if runtime.resolve_device(preference, key="train.device") == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def slurm_environment(env: Optional[dict] = None) -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for a process
    started by SLURM's ``srun`` (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), where torchrun's are
    not set; {} otherwise. The rendezvous address is MASTER_ADDR when the job script exports it,
    else the node ``srun`` was launched from (SLURM_LAUNCH_NODE_IPADDR); the port MASTER_PORT, else
    29500 plus the job id's last three digits (two jobs on one node do not collide)."""
    env = os.environ if env is None else env
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return {}
    addr = env.get("MASTER_ADDR") or env.get("SLURM_LAUNCH_NODE_IPADDR")
    if not addr:
        raise ValueError("SLURM launch: neither MASTER_ADDR nor SLURM_LAUNCH_NODE_IPADDR is set; export "
                         "MASTER_ADDR (the first node of the allocation) in the job script")
    job = env.get("SLURM_JOB_ID", "0")
    port = env.get("MASTER_PORT") or str(29500 + int(job[-3:]) if job[-3:].isdigit() else 29500)
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "MASTER_ADDR": addr, "MASTER_PORT": port}


def setup(preference: Literal["auto", "cpu", "cuda"], timeout_s: float = 1800.0) -> Runtime:
    """Join torchrun's process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on CUDA); a
    process started by SLURM's ``srun`` is recognised too (:func:`slurm_environment`).

    Args:
        preference: ``train.device``.
        timeout_s: collective timeout; must cover the longest wait for synthetic data, during
            which the other ranks block in a broadcast.
    """
    slurm = slurm_environment()
    if slurm:
        os.environ.update(slurm)          # init_process_group's env:// rendezvous reads them
        _logger.info("SLURM task %s of %s (local %s); rendezvous at %s:%s", slurm["RANK"], slurm["WORLD_SIZE"],
                     slurm["LOCAL_RANK"], slurm["MASTER_ADDR"], slurm["MASTER_PORT"])
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        _logger.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    return Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Sum over ranks, in place; returns the tensor."""
    if rt.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, rt: Runtime) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not rt.distributed:
        return [obj]
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, rt: Runtime, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not rt.distributed:
        return obj
    box = [obj if rt.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
