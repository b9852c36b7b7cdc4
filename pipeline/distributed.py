"""torchrun support: which process this is, and the few collectives stage one needs.

Launched by `torchrun` (WORLD_SIZE > 1 in the environment), a process joins
the group with gloo on CPU or NCCL on CUDA; launched plainly, it is rank 0 of 1
and every collective here is a no-op, so single-process code needs no branches.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks wait at barriers while the slowest rank embeds its share: allow long waits.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world_size > 1

    def device_name(self, requested):
        """Each rank takes its own GPU: 'auto'/'cuda' become cuda:LOCAL_RANK under torchrun."""
        if self.active and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def barrier(self):
        if self.active:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's `value` on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def join(requested_device):
    """The process group of this launch (joined on first call), or a one-process stand-in."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Group()
    if not dist.is_initialized():
        use_nccl = requested_device != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if use_nccl else "gloo", timeout=BARRIER_TIMEOUT)
    return Group(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def leave():
    if dist.is_initialized():
        dist.destroy_process_group()
