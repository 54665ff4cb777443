"""A one-hidden-layer MLP on scikit-learn's 8x8 digits (1,797 images shipped with scikit-learn).

trainyard's Trainer.fit runs the loop (early stopping on val_acc, best-state restore, checkpoints,
resume, the schedule); this class only says how to set up, train one epoch and evaluate. With
`--workers N` each worker trains on its 1/N of every epoch and DDP averages the gradients.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from trainers.base import Trainer, make_scheduler
from trainyard_digits.config import DigitsMlpConfig


class DigitsMlpTrainer(Trainer):
    algorithm = "digits-mlp"          # the name in checkpoints: the entry point's name
    config_class = DigitsMlpConfig

    def setup(self) -> None:
        config = self.config
        images, labels = load_digits(return_X_y=True)
        rest_x, test_x, rest_y, test_y = train_test_split(images, labels, test_size=config.test_frac,
                                                          stratify=labels, random_state=config.seed)
        train_x, val_x, train_y, val_y = train_test_split(
            rest_x, rest_y, test_size=config.val_frac / (1 - config.test_frac), stratify=rest_y,
            random_state=config.seed)
        # standardised with the training split's statistics; a pixel that is always 0 there
        # (the border) keeps its scale instead of being blown up by a tiny deviation
        mean, std = train_x.mean(axis=0), np.maximum(train_x.std(axis=0), 1.0)
        self.splits = {name: (self._tensor((x - mean) / std), torch.as_tensor(y, device=self.device))
                       for name, x, y in (("train", train_x, train_y), ("val", val_x, val_y),
                                          ("test", test_x, test_y))}
        net = torch.nn.Sequential(torch.nn.Linear(64, config.hidden), torch.nn.ReLU(),
                                  torch.nn.Dropout(config.dropout), torch.nn.Linear(config.hidden, 10))
        self.model = self.context.prepare_model(net)   # DDP on several workers
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, config.schedule, config.max_iterations,
                                        **config.schedule_kwargs)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=self.device)

    def step(self) -> dict[str, float]:
        """One epoch: this worker's equal share of a seeded shuffle (the same on every worker)."""
        x, y = self.splits["train"]
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.config.seed + self.iteration))
        share = len(order) // self.context.world_size
        mine = order[self.context.rank * share:(self.context.rank + 1) * share].to(self.device)
        self.model.train()
        total, batches = 0.0, 0
        for start in range(0, share, self.config.batch_size):
            batch = mine[start:start + self.config.batch_size]
            loss = torch.nn.functional.cross_entropy(self.model(x[batch]), y[batch])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total, batches = total + loss.item(), batches + 1
        return {"loss": total / max(batches, 1)}

    @torch.no_grad()
    def split_metrics(self, name: str) -> dict[str, float]:
        x, y = self.splits[name]
        self.model.eval()
        logits = self.model(x)
        return {f"{name}_loss": float(torch.nn.functional.cross_entropy(logits, y)),
                f"{name}_acc": float((logits.argmax(dim=1) == y).float().mean())}

    def evaluate(self) -> dict[str, float]:
        return self.split_metrics("val")

    def final_metrics(self) -> dict[str, float]:
        return self.split_metrics("test")   # once, on the best (by val_acc) weights
