"""`born-adversarial`: PGD adversarial training (Madry et al.) or TRADES for the Born classifier.

One iteration = one epoch; per batch the attack runs on the unwrapped model (input gradients
only), then ONE forward of the DDP model on clean and adversarial inputs together gives the loss:
- pgd-at: x_adv = PGD(NLL) within eps; loss = (1 - clean_weight) NLL(x_adv) + clean_weight NLL(x);
- trades: x_adv = PGD(KL(p(.|x) || p(.|x_adv))) within eps; loss = NLL(x) + beta KL(...).
`curriculum_epochs` > 0 grows the training eps linearly from eps/curriculum_epochs to `epsilon`.
Early stopping (default) on val_rob, the validation PGD accuracy at `epsilon`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.bornmachine.config import BornAdversarialConfig
from trainers.bornmachine.metrics import nll_objective, pgd
from trainers.bornmachine.trainers import BornTrainer


def kl_divergence(clean_log_probs: torch.Tensor, adversarial_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(p(.|x) || p(.|x_adv)), mean over the batch."""
    return F.kl_div(adversarial_log_probs, clean_log_probs, log_target=True, reduction="batchmean")


class BornAdversarialTrainer(BornTrainer):
    algorithm = "born-adversarial"
    config_class = BornAdversarialConfig
    config: BornAdversarialConfig

    def training_epsilon(self) -> float:
        config = self.config
        if config.curriculum_epochs == 0:
            return config.epsilon
        return config.epsilon * min(1.0, (self.iteration + 1) / config.curriculum_epochs)

    def attack(self, x: torch.Tensor, y: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
        log_probs = self.machine.class_log_probs
        if self.config.method == "trades":
            with torch.no_grad():
                clean = log_probs(x)
            objective = lambda candidate: kl_divergence(clean, log_probs(candidate))  # noqa: E731
        else:
            objective = nll_objective(log_probs, y)
        return pgd(objective, x, epsilon, self.config.pgd_steps, generator)

    def batch_loss(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        config = self.config
        clean, adversarial = self.model(torch.cat([x, x_adv]), task="classify").split(len(x))
        if config.method == "trades":
            return F.nll_loss(clean, y) + config.beta * kl_divergence(clean, adversarial)
        return (1 - config.clean_weight) * F.nll_loss(adversarial, y) + config.clean_weight * F.nll_loss(clean, y)

    def train_epoch(self) -> dict[str, float]:
        epsilon = self.training_epsilon()
        generator = self.epoch_generator()
        total = torch.zeros((), device=self.device)
        batches = self.batches(generator)
        for indices in batches:
            x, y = self.train_batch(indices)
            self.machine.eval()
            x_adv = self.attack(x, y, epsilon, generator)
            self.model.train()
            loss = self.batch_loss(x, x_adv, y)
            self.optimise(loss, self.optimizer, self.machine.parameters())
            total += loss.detach()
        return {"loss": float(total / len(batches)), "train_epsilon": epsilon}

    def validation_extras(self) -> tuple[str, ...]:
        return ("rob",) + tuple(name for name in ("fid",) if self.config.metric == f"val_{name}")
