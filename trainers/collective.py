"""Sums across data-parallel ranks, for trainers that split their own batch axis (torch.distributed
only: the process group is whatever the context set up; no Ray here).

With one rank (LocalContext, a Tune trial) every function is a no-op, so single-process code
pays nothing. Every rank must call these in the same order: they are collectives.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def active(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def share(count: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of `count` items: sizes differ by at most one, and a rank
    gets an empty share only when there are fewer items than ranks."""
    return slice(count * rank // world_size, count * (rank + 1) // world_size)


def sum_(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """In place: the element-wise sum of `tensor` over the ranks (returned for chaining)."""
    if active(world_size):
        dist.all_reduce(tensor)
    return tensor


def global_sum(local: torch.Tensor, world_size: int) -> torch.Tensor:
    """A value equal to the sum of `local` over the ranks whose gradient is that of `local` alone.

    A loss built from it has its global value on every rank (the convergence checks agree without
    another sync), and backward gives each rank the gradient of the global loss through its own
    share; `sum_gradients` then adds the shares up."""
    if not active(world_size):
        return local
    total = sum_(local.detach().clone(), world_size)
    return total + (local - local.detach())


def sum_gradients(parameters: Iterable[torch.nn.Parameter], world_size: int) -> None:
    """Add every parameter's gradient over the ranks, in one all-reduce of one flat buffer."""
    if not active(world_size):
        return
    parameters = [p for p in parameters if p.requires_grad]
    for parameter in parameters:  # a rank whose share is empty may hold no gradient: add zeros
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    grads = [p.grad for p in parameters]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def gather(value: object, world_size: int) -> list:
    """Every rank's `value` (picklable), in rank order, on every rank; `[value]` with one rank."""
    if not active(world_size):
        return [value]
    values: list = [None] * world_size
    dist.all_gather_object(values, value)
    return values
