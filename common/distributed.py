"""Data-parallel training on one node: one process per device (DDP), NCCL on CUDA, gloo on CPU.

``trainer.distributed=true`` expects one process per device started by the launcher: submitit with
``hydra.launcher.tasks_per_node=N`` (SLURM or ``launcher=submitit_local``), whose job environment gives the
ranks, or ``torchrun``, which sets ``RANK``/``WORLD_SIZE`` itself. Each process trains on its slice of every
global batch; DDP averages the gradients, so the run follows the single-process run with the same global batch
(up to float summation order). Only rank 0 writes logs, checkpoints and results.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.config import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (a single process when ``world_size`` is 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (``tensor_split``: sizes differ by at most one)."""
        if not self.enabled:
            return tensor
        return tensor.tensor_split(self.world_size)[self.rank]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a new tensor; the input is left alone)."""
        if not self.enabled:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on at least one (a collective: all ranks must call it)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` on every rank (a collective)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(enabled: bool, device_spec: str) -> tuple[DistContext, torch.device | None]:
    """Join the process group when ``enabled``; returns the context and this rank's device (None: not chosen).

    Raises:
        ConfigError: distributed training asked for, but this process was not started as one of several.
    """
    if not enabled:
        return DistContext(), None
    if "RANK" not in os.environ:
        try:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export()  # one visible GPU per task
        except RuntimeError:
            raise ConfigError(
                "trainer.distributed=true needs one process per device: use launcher=slurm or launcher=submitit_local "
                "with hydra.launcher.tasks_per_node=<devices> (and gpus_per_node=<devices>), or torchrun"
            ) from None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    if use_cuda:
        # with CUDA_VISIBLE_DEVICES narrowed to one GPU per task, that GPU is cuda:0
        index = local_rank if torch.cuda.device_count() > 1 else 0
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    log.info("distributed: rank %d of %d on %s (%s)", rank, world, device, dist.get_backend())
    if rank != 0:  # the ranks share the run folder's log: the others only report problems
        logging.getLogger().setLevel(logging.WARNING)
    return DistContext(rank, world, local_rank), device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
