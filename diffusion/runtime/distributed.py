"""Data-parallel context for ``torchrun``: which process this is, and the few collectives training and sampling need.

``torchrun --nproc_per_node=N run.py ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the
context is a single process and every collective is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist


def export_submitit_task_environment() -> None:
    """Under a submitit launcher with several tasks (``hydra/launcher=slurm``), export torchrun's RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from SLURM's variables. No-op under torchrun or outside
    submitit."""
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment  # present whenever a submitit launcher runs us

    environment = TorchDistributedEnvironment()
    if environment.world_size > 1:
        environment.export(set_cuda_visible_devices=False)  # every GPU stays visible: rank picks cuda:<LOCAL_RANK>


def restart_store(world_size: int) -> dist.Store | None:
    """The key-value store the process group meets in, one namespace per torchrun restart; None: ``env://``.

    The agent's store still holds a dead group's addresses after ``torchrun --max-restarts``, which new ranks would
    fail to connect to; so each ``TORCHELASTIC_RESTART_COUNT`` gets keys of its own."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False)
    return dist.PrefixStore(f"diffusion/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


_joined = False  # this process has joined a process group (it stays true after the group is destroyed)


def joined_process_group() -> bool:
    """Whether this process joined a process group (a torchrun rank), even one destroyed since."""
    return _joined


def exit_process(status: int | str | None = 0) -> NoReturn:
    """Leave the process with ``status`` (a ``SystemExit`` code) the way Python would, but, in a process that has
    joined a process group, without the interpreter's finalisation.

    Once DistributedDataParallel has wrapped a model, a gloo process group's worker threads outlive
    ``destroy_process_group`` (something on PyTorch's C++ side keeps the group). A worker that drops the last
    reference to a finished collective after the interpreter has begun to finalise must take the GIL to free that
    collective's Python tensors, and a thread cannot take it then: the C++ runtime aborts ("terminate called without
    an active exception", SIGABRT), and torchrun reports the rank as failed and stops the others, even one still
    sampling or scoring. The race is PyTorch's (pytorch/pytorch#190489, open); a loaded machine opens it (here 1
    torchrun run in 80 beside other jobs). What finalisation would still do for us is flushing: the standard streams
    and ``logging`` handlers are flushed here."""
    if not _joined:
        sys.exit(status)
    if status is not None and not isinstance(status, int):
        print(status, file=sys.stderr)  # what Python does with a message as the exit status
        status = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, checkpoints, writes samples and scores (every rank draws its share of the samples)."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "auto") -> DistributedContext:
        """Join the process group torchrun (or a multi-task submitit/SLURM job) describes (nccl on GPUs, gloo on
        CPU); single process otherwise."""
        export_submitit_task_environment()
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            backend = "nccl" if use_cuda else "gloo"
            dist.init_process_group(backend=backend, store=restart_store(world_size), rank=rank,
                                    world_size=world_size)
        global _joined
        _joined = True
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:<local_rank>`` for CUDA, unchanged otherwise."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (e.g. the run directory, so N ranks share one)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (e.g. each rank's RNG states for a checkpoint)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average a tensor over ranks (for logging losses)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is true on any (a stop signal seen by one rank stops all)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def shard(self, total: int, block: int = 1) -> range:
        """This rank's contiguous share of ``range(total)`` in whole blocks of ``block`` items (sampling: batches,
        so every rank runs the very batches one process would, and floating-point results do not depend on the
        number of ranks): blocks ``[r B // W, (r + 1) B // W)`` of ``B = ceil(total / block)``; a rank may get none."""
        blocks = -(-total // block)
        start = self.rank * blocks // self.world_size * block
        return range(min(start, total), min((self.rank + 1) * blocks // self.world_size * block, total))

    def gather_to_main(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object; tensors travel on the CPU) in rank order on rank 0, ``[]``
        on the others; ``[value]`` for a single process. Collective: every rank must call it."""
        if not self.enabled:
            return [value]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered or []

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
