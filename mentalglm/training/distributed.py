"""``torch.distributed`` for ``torchrun`` / ``accelerate launch``: who this process is, and collectives.

Both launchers set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; with ``WORLD_SIZE`` above 1 the process group is initialised from them
(``nccl`` on CUDA, ``gloo`` on CPU) and every process trains a DDP replica on its shard of the
data. A plain ``mentalglm train`` is a world of one and never touches ``torch.distributed``.
Only rank 0 writes files; the run folder must be shared by all processes (one machine, or a
shared file system) for resuming to work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mentalglm.core.errors import MentalGLMError


@dataclass
class DistContext:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 writes the files).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: the ``torch.device`` this process trains on.
        initialized: whether this object set up the process group (and must tear it down).
    """

    rank: int
    world_size: int
    local_rank: int
    device: Any
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (no-op in a world of one)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list:
        """Every process's ``value``, by rank (``[value]`` in a world of one)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        # float64 on the training device: nccl reduces only CUDA tensors, gloo CPU ones.
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def close(self) -> None:
        """Tear down the process group if this context created it."""
        if self.initialized:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.initialized = False


def setup(device_setting: str = "auto") -> DistContext:
    """Read the launcher's environment, pick the device, and join the process group if there is one.

    Args:
        device_setting: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under
            DDP on CUDA each process takes GPU ``LOCAL_RANK``.

    Returns:
        The context.

    Raises:
        MentalGLMError: CUDA asked for but not available.
    """
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_setting.startswith("cuda") or (device_setting == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise MentalGLMError(f"--device {device_setting}: no CUDA GPU is available here (use --device cpu)")
    if not wants_cuda:
        device = torch.device("cpu")
    elif world_size > 1:
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device(device_setting if device_setting.startswith("cuda:") else "cuda")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    context = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
            context.initialized = True
    return context
