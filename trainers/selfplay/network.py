"""The actor-critic: a small squeeze-and-excitation ResNet over the dlshogi planes.

    119 planes -> 3x3 conv stem -> `blocks` x SE residual block (`channels` wide)
        -> policy: 1x1 conv to 27 planes, flattened to the 2,187 labels (kind * 81 + square)
        -> value:  1x1 conv to 8 planes -> 64 -> 1, tanh (the side to move's expected result)

No batch normalisation: PPO's importance ratio compares log-probs from collection (inference)
and from the update (training); batch statistics would make the two differ. Instead each
residual branch ends in a zero-initialised convolution, so a block starts as the identity.
The policy layer starts small (the first policy is near uniform over the legal moves).

`make_policy_fn` wraps a network as `policy_fn(features, masks) -> (logits, values)`, the only
call the game runner makes: a GPU inference server can replace it.

Mixed precision (`mixed_precision`, CUDA only): the forward runs under bf16 autocast
(`autocast`), and its outputs are cast to float32 before anything is computed from them
(log-softmax, sampling, losses), so log-probs and PPO ratios are float32.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.precision import autocast, uses_amp
from trainers.selfplay.game import FEATURE_PLANES, MOVE_KINDS

SE_REDUCTION = 4          # squeeze-and-excitation bottleneck: channels // 4
VALUE_PLANES = 8
VALUE_HIDDEN = 64

PolicyFn = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.squeeze = nn.Linear(channels, max(1, channels // SE_REDUCTION))
        self.excite = nn.Linear(max(1, channels // SE_REDUCTION), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3))))))
        return x * weights[:, :, None, None]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.se = SqueezeExcitation(channels)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.se(self.conv2(F.relu(self.conv1(x)))))


class ActorCritic(nn.Module):
    def __init__(self, blocks: int = 4, channels: int = 48):
        super().__init__()
        self.blocks, self.channels = blocks, channels
        self.stem = nn.Conv2d(FEATURE_PLANES, channels, 3, padding=1)
        self.tower = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.policy = nn.Conv2d(channels, MOVE_KINDS, 1)
        self.value_conv = nn.Conv2d(channels, VALUE_PLANES, 1)
        self.value_hidden = nn.Linear(VALUE_PLANES * 81, VALUE_HIDDEN)
        self.value_out = nn.Linear(VALUE_HIDDEN, 1)
        nn.init.normal_(self.policy.weight, std=0.01)
        nn.init.zeros_(self.policy.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, 119, 9, 9) -> policy logits (B, 2187), values (B,) in [-1, 1]."""
        x = self.tower(F.relu(self.stem(features)))
        logits = self.policy(x).flatten(1)
        hidden = F.relu(self.value_hidden(F.relu(self.value_conv(x)).flatten(1)))
        return logits, torch.tanh(self.value_out(hidden)).squeeze(1)


def masked_logits(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Illegal labels get -inf: a softmax over the result is a distribution over legal moves."""
    return logits.masked_fill(~masks, float("-inf"))


def make_policy_fn(network: nn.Module, device: torch.device | str = "cpu", mixed_precision: bool = False) -> PolicyFn:
    """`policy_fn(features, masks)`: numpy float32 (B, 119, 9, 9) and bool (B, 2187) in, CPU
    tensors out: masked logits (B, 2187) and values (B,), float32. With `mixed_precision` on
    CUDA the forward runs under bf16 autocast (outputs cast to float32 before masking)."""
    device = torch.device(device)
    amp = uses_amp(mixed_precision, device)

    @torch.inference_mode()
    def policy_fn(features: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(amp):
            logits, values = network(torch.from_numpy(features).to(device))
        logits = masked_logits(logits.float(), torch.from_numpy(masks).to(device))
        return logits.cpu(), values.float().cpu()

    return policy_fn
