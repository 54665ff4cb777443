"""bf16 autocast, one definition for every trainer with a `mixed_precision` key: on CUDA only
(on a CPU the key is ignored). Callers cast the network's outputs to float32 before losses,
log-probs and metrics; bf16 has float32's range, so no gradient scaler is needed."""
from __future__ import annotations

import contextlib

import torch


def uses_amp(mixed_precision: bool, device: torch.device | str) -> bool:
    """Whether `mixed_precision` takes effect on `device` (CUDA only)."""
    return bool(mixed_precision) and torch.device(device).type == "cuda"


def autocast(enabled: bool, cache: bool = True):
    """The context of a network forward: bf16 autocast on CUDA when `enabled`, else nothing.
    `cache=False` while a CUDA graph is captured (the cast weights must not outlive the capture)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=cache)
