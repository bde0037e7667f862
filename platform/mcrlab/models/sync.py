"""Keeping BatchNorm buffers equal across data-parallel ranks.

Gradients are all-reduced, so parameters stay equal on every rank; BatchNorm's running statistics are
not gradients and drift apart, each rank seeing only its shard. ``sync_buffers`` makes them equal again:
floating-point buffers (running_mean, running_var) are averaged over the ranks, the others
(num_batches_tracked, equal anyway when every rank takes the same steps) are broadcast from rank 0.
Call it before evaluation and before a checkpoint is written.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["sync_buffers"]


def sync_buffers(model: nn.Module, group: dist.ProcessGroup | None = None) -> int:
    """Average floating buffers, broadcast the others from rank 0; returns how many buffers were synced.

    A no-op (returns 0) outside an initialised process group or with one rank.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) < 2:
        return 0
    world = dist.get_world_size(group)
    buffers = list(model.buffers())
    floats = [b for b in buffers if b.is_floating_point()]
    others = [b for b in buffers if not b.is_floating_point()]
    if floats:
        # one flat all-reduce in float64 (running_var sums of many ranks lose no precision)
        flat = torch.cat([b.detach().reshape(-1).double() for b in floats])
        dist.all_reduce(flat, group=group)
        flat /= world
        offset = 0
        for b in floats:
            n = b.numel()
            b.copy_(flat[offset:offset + n].view_as(b).to(b.dtype))
            offset += n
    for b in others:
        dist.broadcast(b, src=0, group=group)
    return len(buffers)
