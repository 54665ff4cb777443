"""The class-aware critic of `born-gan` and its two losses.

MLP n -> h -> h -> h (LeakyReLU 0.01), h = 8n by default, then one logit per class: the score of
an example is the logit of its own class, so the critic judges "is this a real example of class
c", and the generator is pushed per class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassAwareCritic(nn.Module):
    def __init__(self, n_features: int, n_classes: int, hidden: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(3):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.01)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).gather(1, labels[:, None]).squeeze(1)


def critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor, kind: str,
                gp_weight: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """BCE (real -> 1, fake -> 0) or WGAN-GP. Real, fake (and the interpolates of the penalty)
    go through ONE critic call, so that a DDP-wrapped critic sees one forward per backward."""
    batch = real.shape[0]
    if kind == "bce":
        scores = critic(torch.cat([real, fake]), torch.cat([labels, labels]))
        targets = torch.cat([torch.ones(batch), torch.zeros(batch)]).to(scores)
        return F.binary_cross_entropy_with_logits(scores, targets)
    mix = torch.rand(batch, 1, generator=generator).to(real)
    between = (mix * real + (1 - mix) * fake).requires_grad_(True)
    scores = critic(torch.cat([real, fake, between]), torch.cat([labels, labels, labels]))
    real_score, fake_score, between_score = scores.split(batch)
    (gradient,) = torch.autograd.grad(between_score.sum(), between, create_graph=True)
    penalty = (gradient.norm(dim=1) - 1).square().mean()
    return fake_score.mean() - real_score.mean() + gp_weight * penalty


def generator_loss(critic: nn.Module, fake: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Non-saturating BCE (-log D(fake)) or the Wasserstein generator loss (-critic(fake))."""
    scores = critic(fake, labels)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores))
    return -scores.mean()
