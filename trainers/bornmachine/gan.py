"""`born-gan`: sharpen what a pre-trained Born classifier generates with a class-aware critic.

The start is a classifier: a `born-classify` checkpoint (`classifier_checkpoint`, loaded with
weights_only) or one pre-trained here (early stopping on validation accuracy, best weights
kept). Its validation accuracy is the goal the GAN epochs must not lose.

One iteration = one epoch over this rank's shard of the training data, per batch:
  1. draw fakes of the batch's classes without gradient (exact sampling, seeded uniforms);
  2. `critic_steps` critic updates on that real/fake pair (BCE or WGAN-GP);
  3. draw fakes again WITH gradient (the sampler is differentiable in the cores), one generator
     update of the MPS against the critic.
After the epoch: if validation accuracy fell more than `tolerance` below the goal, classification
epochs (NLL of p(c|x), their own optimiser) run until it is back at the goal or
`retrain_max_epochs` pass. Both steps update the SAME cores (one parameter set, one model).
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch

from trainers.base import EarlyStopping
from trainers.bornmachine.config import BornGanConfig
from trainers.bornmachine.critic import ClassAwareCritic, critic_loss, generator_loss
from trainers.bornmachine.pretrained import read_classifier_checkpoint
from trainers.bornmachine.trainers import BornTrainer, make_adam

PRETRAIN_SALT, RETRAIN_SALT = 1_000_000, 2_000_000  # keep the data orders of the phases apart


class BornGanTrainer(BornTrainer):
    algorithm = "born-gan"
    config_class = BornGanConfig
    config: BornGanConfig

    def setup(self) -> None:
        super().setup()  # data, the MPS (DDP-wrapped), the generator's optimiser and schedule
        config = self.config
        hidden = config.critic_hidden or 8 * self.data.n_features
        self.critic = ClassAwareCritic(self.data.n_features, self.data.n_classes, hidden).to(self.device)
        self.critic_model = self.context.prepare_model(self.critic)
        self.critic_optimizer = make_adam(self.critic_model.parameters(), lr=config.critic_lr, betas=(0.5, 0.999))
        self.classifier_optimizer = make_adam(self.model.parameters(), lr=self.mps_lr(config.pretrain_lr))
        self.retrain_epochs_total = 0
        # a resumed run gets all of this back from its checkpoint: do not pre-train again
        self.pretrained = {} if self.resuming else self.start_from_classifier()

    # ----- the starting classifier
    def start_from_classifier(self) -> dict[str, float]:
        config = self.config
        if config.classifier_checkpoint is not None:
            self.machine.load_state_dict(read_classifier_checkpoint(config))
            epochs = 0
        else:
            epochs = self.pretrain_classifier()
        validation = self.split_metrics("val", ("fid",))
        test = self.split_metrics("test", ("fid",))
        return {"goal_acc": validation["acc"], "pretrain_epochs": float(epochs), "pretrain_val_fid": validation["fid"],
                "pretrain_test_fid": test["fid"], "pretrain_test_acc": test["acc"]}

    def pretrain_classifier(self) -> int:
        """Classification epochs with early stopping on validation accuracy; best weights kept."""
        stopper = EarlyStopping("max", self.config.pretrain_patience)
        best = copy.deepcopy(self.machine.state_dict())
        for epoch in range(self.config.pretrain_epochs):
            self.classification_epoch(self.classifier_optimizer, salt=PRETRAIN_SALT + epoch)
            accuracy = self.context.average({"acc": self.split_metrics("val")["acc"]})["acc"]
            is_best, stop = stopper.update(accuracy, epoch)
            if is_best:
                best = copy.deepcopy(self.machine.state_dict())
            if stop:
                break
        self.machine.load_state_dict(best)
        return epoch + 1

    # ----- one epoch
    def train_epoch(self) -> dict[str, float]:
        config = self.config
        started = time.perf_counter()
        generator = self.epoch_generator()
        totals = torch.zeros(2, device=self.device)
        batches = self.batches(generator)
        for indices in batches:
            real, labels = self.train_batch(indices)
            with torch.no_grad():
                fake = self.machine.sample(labels, self.uniforms(len(labels), generator))
            for _ in range(config.critic_steps):
                loss_critic = critic_loss(self.critic_model, real, fake, labels, config.gan_loss, config.gp_weight,
                                          generator)
                self.optimise(loss_critic, self.critic_optimizer, self.critic.parameters())
            fake = self.model(task="sample", labels=labels, uniforms=self.uniforms(len(labels), generator))
            loss_generator = generator_loss(self.critic_model, fake, labels, config.gan_loss)
            self.optimise(loss_generator, self.optimizer, self.machine.parameters())
            totals += torch.stack([loss_generator.detach(), loss_critic.detach()])
        gan_seconds = time.perf_counter() - started
        retrain_epochs = self.retrain_if_needed()
        loss_generator, loss_critic = (totals / len(batches)).tolist()
        return {"loss": loss_generator, "loss_critic": loss_critic, "retrain_epochs": float(retrain_epochs),
                "epoch_seconds_no_retrain": gan_seconds}

    def uniforms(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(count, self.data.n_features, generator=generator).to(self.device)

    def retrain_if_needed(self) -> int:
        """Classification epochs while validation accuracy is more than `tolerance` below the goal,
        until it is back at the goal (or retrain_max_epochs)."""
        goal = self.pretrained["goal_acc"]
        accuracy = self.context.average({"acc": self.split_metrics("val")["acc"]})["acc"]
        if goal - accuracy <= self.config.tolerance:
            return 0
        epochs = 0
        while accuracy < goal and epochs < self.config.retrain_max_epochs:
            salt = RETRAIN_SALT + self.retrain_epochs_total * 97 + epochs
            self.classification_epoch(self.classifier_optimizer, salt=salt)
            accuracy = self.context.average({"acc": self.split_metrics("val")["acc"]})["acc"]
            epochs += 1
        self.retrain_epochs_total += epochs
        return epochs

    def validation_extras(self) -> tuple[str, ...]:
        return ("fid",)  # what the epochs are for: measured every epoch whatever the metric

    def final_metrics(self) -> dict[str, float]:
        final = super().final_metrics()
        final.update(self.pretrained)
        if self.pretrained.get("pretrain_test_fid"):
            final["fid_reduction"] = 1 - final["test_fid"] / self.pretrained["pretrain_test_fid"]
        final["retrain_epochs_total"] = float(self.retrain_epochs_total)
        no_retrain = [row["epoch_seconds_no_retrain"] for row in self.history if "epoch_seconds_no_retrain" in row]
        if no_retrain:
            final["avg_epoch_seconds_no_retrain"] = sum(no_retrain) / len(no_retrain)
        return final

    # ----- state
    def extra_state(self) -> dict[str, Any]:
        return {"critic": copy.deepcopy(self.critic.state_dict()),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "classifier_optimizer": self.classifier_optimizer.state_dict(),
                "pretrained": dict(self.pretrained), "retrain_epochs_total": self.retrain_epochs_total}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.classifier_optimizer.load_state_dict(state["classifier_optimizer"])
        self.pretrained = dict(state["pretrained"])
        self.retrain_epochs_total = int(state["retrain_epochs_total"])
