"""Which process of a data-parallel evaluation this is: torchrun, `accelerate launch`, or one process.

Launched by torchrun (or anything that sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT), the
analyses join the process group themselves: through Accelerate's `PartialState` when Accelerate is
installed, else `torch.distributed` directly. The backend follows the device the evaluation runs on,
not what the machine has: nccl for a model on a GPU, gloo for a CPU model (also on a GPU machine,
where several CPU processes cannot share one GPU through nccl). A process group the caller has
already set up is used as it is. Without any of these the evaluation is one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def world(device=None) -> World:
    """This process' rank and the number of processes, joining the launcher's process group if needed.
    device: where the evaluation runs (a model's `.device`); a CUDA device selects nccl, anything
    else gloo."""
    import torch
    import torch.distributed as dist

    on_gpu = device is not None and torch.device(device).type == "cuda"
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or not dist.is_available():
        return World()
    try:
        from accelerate import PartialState
    except ImportError:
        PartialState = None
    if PartialState is not None:
        state = PartialState(cpu=not on_gpu)  # sets up the process group from the launcher's environment
        if dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size())
        return World(state.process_index, state.num_processes)
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return World(dist.get_rank(), dist.get_world_size())


def local_device(device: str | None) -> str | None:
    """The GPU of this process under a multi-GPU launch (`cuda` -> `cuda:LOCAL_RANK`), else `device`."""
    if device in (None, "cuda") and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device
