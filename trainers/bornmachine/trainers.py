"""`born-classify` and `born-generative`, and what every Born-machine trainer shares.

One iteration = one epoch over this rank's shard of the training split. Every rank shuffles the
training indices with the same seeded generator and takes every world_size-th one, in the same
number of batches (each batch ends in a DDP all-reduce, so the counts must match). Validation
metrics are computed on the whole validation split by every rank (it is small), test metrics
once, on the best weights, by `final_metrics`.

Metrics (validation prefixed val_, test test_):
  acc, loss (classification NLL), gen_nll (-log p(x, c) in nats per example, on the scaled
  inputs in [0, 1]^n), rob (PGD accuracy at `epsilon`), rob_fgsm@eps / rob_pgd@eps for eps in
  0.1, 0.3, fid (per-class Frechet distance of generated samples to the split, raw features),
  at the end fid_rff (the same on random Fourier features: it sees shape, see
  `metrics.FourierEmbedding`) and both against a per-class Gaussian (fid_gaussian,
  fid_rff_gaussian), epoch_seconds (training time of the epoch) and, at the end, avg_epoch_seconds.
"""
from __future__ import annotations

import abc
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainers.base import Trainer, make_scheduler
from trainers.bornmachine import metrics as born_metrics
from trainers.bornmachine.config import DATA_KEYS, BornClassifyConfig, BornConfig, BornGenerativeConfig
from trainers.bornmachine.data import BornData, load_born_data
from trainers.bornmachine.mps import BornMachine, bond_scaled_lr

EVAL_CHUNK = 2048  # examples per forward pass when evaluating


def make_adam(parameters, **kwargs) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for these tensors: two parameter tensors
    make the per-tensor loop of the default implementation a visible share of a step."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(parameters, **kwargs)


class BornTrainer(Trainer):
    """Data, model, optimiser, batches, evaluation and figures of the Born-machine trainers."""

    config: BornConfig

    # the data set and its splits: the same for every trial of a search that does not vary them
    shared_data_keys = DATA_KEYS

    @classmethod
    def build_shared_data(cls, config: BornConfig) -> BornData:
        return load_born_data(**config.data_kwargs())

    def setup(self) -> None:
        config = self.config
        self.data: BornData = self.shared_data()
        self.split_tensors = {name: self.to_tensors(getattr(self.data, name)) for name in ("train", "val", "test")}
        self.machine = BornMachine(self.data.n_features, self.data.n_classes, config.feature_dim, config.bond_dim,
                                   config.feature_map, config.init_noise, config.grid_size).to(self.device)
        self.model = self.context.prepare_model(self.machine)
        self.optimizer = make_adam(self.model.parameters(), lr=self.mps_lr(config.lr))
        self.scheduler = make_scheduler(self.optimizer, config.schedule, config.max_iterations,
                                        **config.schedule_kwargs)

    def mps_lr(self, lr: float) -> float:
        """The MPS's Adam learning rate for a configured `lr` (see `bond_scaled_lr`)."""
        return bond_scaled_lr(lr, self.config.bond_dim) if self.config.lr_scaling == "bond" else lr

    def _restart_lr(self, lr: float) -> None:
        super()._restart_lr(self.mps_lr(lr))

    def to_tensors(self, split) -> tuple[torch.Tensor, torch.Tensor]:
        # copies: shared arrays come read-only from Ray's object store, and torch would write through
        return torch.tensor(split.x, device=self.device), torch.tensor(split.y, device=self.device)

    # ----- batches
    def epoch_generator(self, salt: int = 0) -> torch.Generator:
        """Seeded by (seed, epoch, salt), the same on every rank: one shuffle, disjoint shards,
        and the same order again after a resume."""
        return torch.Generator().manual_seed((self.config.seed * 1_000_003 + self.iteration * 7919 + salt) % 2**63)

    def batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        """This rank's shard of the shuffled training indices, in as many batches as every rank."""
        total = len(self.split_tensors["train"][1])
        order = torch.randperm(total, generator=generator)
        world = self.context.world_size
        shard = order[self.context.rank::world]
        # no more batches than the smallest shard has examples: no rank gets an empty batch
        n_batches = max(1, min(math.ceil(total / (self.config.batch_size * world)), total // world))
        return [batch.to(self.device) for batch in torch.tensor_split(shard, n_batches)]

    def train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.split_tensors["train"]
        return x[indices], y[indices]

    def optimise(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:  # Born-rule NLL spikes where a true class's amplitude nears 0
            torch.nn.utils.clip_grad_norm_(parameters, self.config.grad_clip)
        optimizer.step()

    def classification_epoch(self, optimizer: torch.optim.Optimizer, salt: int = 0) -> float:
        """One epoch of NLL of p(c | x); returns the mean training loss (one host sync)."""
        self.model.train()
        total = torch.zeros((), device=self.device)
        batches = self.batches(self.epoch_generator(salt))
        for indices in batches:
            x, y = self.train_batch(indices)
            loss = F.nll_loss(self.model(x, task="classify"), y)
            self.optimise(loss, optimizer, self.machine.parameters())
            total += loss.detach()
        return float(total / len(batches))

    def step(self) -> dict[str, float]:
        started = time.perf_counter()
        metrics = self.train_epoch()
        metrics["epoch_seconds"] = time.perf_counter() - started
        return metrics

    @abc.abstractmethod
    def train_epoch(self) -> dict[str, float]:
        """One epoch of this trainer's loss; returns its metrics."""

    # ----- evaluation (unwrapped model: every rank evaluates the whole split)
    @torch.no_grad()
    def class_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.machine.class_log_probs(chunk) for chunk in x.split(EVAL_CHUNK)])

    @torch.no_grad()
    def generative_nll(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """-log p(x, c) = -(log psi(x, c)^2 - log Z), nats per example."""
        log_psi = torch.cat([self.machine.log_psi_squared(chunk) for chunk in x.split(EVAL_CHUNK)])
        log_joint = log_psi.gather(1, y[:, None]).squeeze(1) - self.machine.log_partition()
        return float(-log_joint.mean())

    def attack_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.machine.class_log_probs(x)

    def robust_accuracy(self, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> float:
        generator = torch.Generator().manual_seed(self.config.seed)
        return born_metrics.robust_accuracy(self.attack_log_probs, x, y, epsilon, "pgd", self.config.pgd_steps,
                                            generator)

    @torch.no_grad()
    def generate(self, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """`per_class` samples of every class, in raw units, from fixed uniforms (common random
        numbers: epoch-to-epoch changes of the Frechet distance are the model's, not the dice's)."""
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(self.data.n_classes).repeat_interleave(per_class)
        uniforms = torch.rand(len(labels), self.data.n_features, generator=generator)
        samples = [self.machine.sample(label_chunk.to(self.device), uniform_chunk.to(self.device)).cpu()
                   for label_chunk, uniform_chunk in zip(labels.split(EVAL_CHUNK), uniforms.split(EVAL_CHUNK))]
        return self.data.to_raw(torch.cat(samples).double().numpy()), labels.numpy()

    def frechet(self, split: str) -> float:
        fake, fake_labels = self.generate(self.config.fid_samples, self.config.seed)
        real = getattr(self.data, split)
        return born_metrics.per_class_frechet(real.raw, real.y, fake, fake_labels, self.data.n_classes)

    def split_metrics(self, split: str, extra: tuple[str, ...] = ()) -> dict[str, float]:
        """acc, loss and gen_nll on a split, plus the expensive ones named in `extra` (fid, rob)."""
        self.machine.eval()
        x, y = self.split_tensors[split]
        metrics = born_metrics.classification_metrics(self.class_log_probs(x), y)
        metrics["gen_nll"] = self.generative_nll(x, y)
        if "rob" in extra:
            metrics["rob"] = self.robust_accuracy(x, y, self.config.epsilon)
        if "fid" in extra:
            metrics["fid"] = self.frechet(split)
        return metrics

    def validation_extras(self) -> tuple[str, ...]:
        """Expensive validation metrics computed every epoch: the early-stopping one."""
        return tuple(name for name in ("rob", "fid") if self.config.metric == f"val_{name}")

    def evaluate(self) -> dict[str, float]:
        return {f"val_{k}": v for k, v in self.split_metrics("val", self.validation_extras()).items()}

    def final_metrics(self) -> dict[str, float]:
        """Everything on the test split, on the restored best weights."""
        metrics = self.split_metrics("test")
        x, y = self.split_tensors["test"]
        self.machine.eval()
        metrics.update(born_metrics.robustness_metrics(self.attack_log_probs, x, y, self.config.pgd_steps,
                                                       seed=self.config.seed))
        metrics.update(self.test_frechet_distances())
        final = {f"test_{k}": v for k, v in metrics.items()}
        epochs = [row["epoch_seconds"] for row in self.history if "epoch_seconds" in row]
        if epochs:
            final["avg_epoch_seconds"] = float(np.mean(epochs))
        return final

    def test_frechet_distances(self) -> dict[str, float]:
        """Frechet distances to the test split of our samples (fid, the draw `frechet` makes) and of
        a per-class Gaussian fitted to the training split (fid_gaussian), on raw coordinates and on
        random Fourier features of the training split (fid_rff, fid_rff_gaussian: FID-style, so
        the distance sees shape, see `FourierEmbedding`). Each sample set is drawn once."""
        data, classes, test = self.data, self.data.n_classes, self.data.test
        draws = {"": self.generate(self.config.fid_samples, self.config.seed),
                 "_gaussian": born_metrics.gaussian_baseline_samples(data.train.raw, data.train.y, classes,
                                                                     self.config.fid_samples, self.config.seed)}
        embed = born_metrics.FourierEmbedding.fit(data.train.raw, seed=self.config.seed)
        distances = {}
        for suffix, (fake, fake_labels) in draws.items():
            distances[f"fid{suffix}"] = born_metrics.per_class_frechet(test.raw, test.y, fake, fake_labels, classes)
            distances[f"fid_rff{suffix}"] = born_metrics.per_class_frechet_features(embed, test.raw, test.y, fake,
                                                                                    fake_labels, classes)
        return distances

    # ----- figures
    def save_figures(self) -> None:
        super().save_figures()
        if self.context.output_dir is None:
            return
        from trainers.bornmachine import figures

        x, y = self.split_tensors["test"]
        predicted = self.class_log_probs(x).argmax(dim=1).cpu()
        counts = born_metrics.confusion_matrix(predicted, y.cpu(), self.data.n_classes)
        accuracy = np.trace(counts) / counts.sum()
        self.context.log_figure("confusion_matrix", figures.confusion_figure(
            counts, self.data.class_names, f"{self.algorithm}: test accuracy {accuracy:.3f}"), self.iteration)
        if self.data.n_features == 2:
            fake, fake_labels = self.generate(min(self.config.fid_samples, 500), self.config.seed)
            self.context.log_figure("samples", figures.scatter_figure(
                self.data.test.raw, self.data.test.y, fake, fake_labels, self.data.class_names,
                self.data.feature_names, f"{self.algorithm}: generated samples over the test data"), self.iteration)
        elif math.isqrt(self.data.n_features) ** 2 == self.data.n_features and self.data.n_features >= 16:
            fake, fake_labels = self.generate(8, self.config.seed)
            self.context.log_figure("samples", figures.image_grid_figure(fake, fake_labels, self.data.class_names),
                                    self.iteration)


class BornClassifyTrainer(BornTrainer):
    """NLL of p(c | x) = psi(x, c)^2 / sum_c' psi(x, c')^2; early stopping on `metric`."""

    algorithm = "born-classify"
    config_class = BornClassifyConfig

    def train_epoch(self) -> dict[str, float]:
        return {"loss": self.classification_epoch(self.optimizer)}


class BornGenerativeTrainer(BornTrainer):
    """Joint NLL -log p(x, c) = -(log psi(x, c)^2 - log Z) with the exact Z, optionally mixed
    with the classification NLL; Z kept near 1 by `norm_control`."""

    algorithm = "born-generative"
    config_class = BornGenerativeConfig
    config: BornGenerativeConfig

    def batch_losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(joint NLL, classification NLL, log Z) of a batch, from ONE forward (DDP-safe)."""
        log_psi, log_partition_per_class = self.model(x, task="joint")
        log_partition = torch.logsumexp(log_partition_per_class, dim=0)
        joint = -(log_psi.gather(1, y[:, None]).squeeze(1) - log_partition).mean()
        classification = F.nll_loss(log_psi - torch.logsumexp(log_psi, dim=1, keepdim=True), y)
        return joint, classification, log_partition

    def train_epoch(self) -> dict[str, float]:
        config = self.config
        self.model.train()
        totals = torch.zeros(3, device=self.device)
        batches = self.batches(self.epoch_generator())
        for indices in batches:
            x, y = self.train_batch(indices)
            joint, classification, log_partition = self.batch_losses(x, y)
            loss = config.mix * joint + (1 - config.mix) * classification
            if config.norm_control == "penalty":
                loss = loss + config.norm_weight * log_partition.square()
            self.optimise(loss, self.optimizer, self.machine.parameters())
            if config.norm_control == "rescale":
                self.rescale_to_unit_partition()
            totals += torch.stack([joint.detach(), classification.detach(), log_partition.detach()])
        joint, classification, log_partition = (totals / len(batches)).tolist()
        return {"loss": joint, "train_class_nll": classification, "train_log_z": log_partition}

    @torch.no_grad()
    def rescale_to_unit_partition(self) -> None:
        """Z scales with the square of the label core: one multiplication sets Z = 1."""
        self.machine.label_core.mul_(torch.exp(-0.5 * self.machine.log_partition()))

    def evaluate(self) -> dict[str, float]:
        metrics = super().evaluate()
        metrics["log_z"] = float(self.machine.log_partition().detach())
        return metrics


__all__ = ["BornTrainer", "BornClassifyTrainer", "BornGenerativeTrainer"]
