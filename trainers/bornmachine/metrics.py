"""Metrics of the Born machine: accuracy, NLLs, robustness under attack, Frechet distance.

Attacks work on the scaled inputs in [0, 1] (L-inf ball of radius eps, clipped to the range):
- FGSM: one signed-gradient step of size eps;
- PGD: random start in the ball, `steps` signed steps of 2.5 eps / steps, projected each time.
They take a function x -> log p(c | x), so the unwrapped model serves (no DDP in the attack:
only input gradients are taken, with torch.autograd.grad, never parameter gradients).

Frechet distance (per class, averaged): Gaussians fitted to real and generated samples on the raw
features, |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2). No Inception network:
the data are low-dimensional.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

LogProbs = Callable[[torch.Tensor], torch.Tensor]
EVAL_EPSILONS = (0.1, 0.3)


# ---------------------------------------------------------------- classification
def classification_metrics(log_probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"acc": float((log_probs.argmax(dim=1) == labels).float().mean()),
            "loss": float(F.nll_loss(log_probs, labels))}


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, n_classes: int) -> np.ndarray:
    counts = torch.zeros(n_classes * n_classes, dtype=torch.long)
    counts.index_add_(0, labels * n_classes + predicted, torch.ones_like(labels))
    return counts.reshape(n_classes, n_classes).numpy()


# ---------------------------------------------------------------- attacks
def input_gradient(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(objective(x), x)
    return gradient


def nll_objective(log_probs: LogProbs, labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: F.nll_loss(log_probs(x), labels, reduction="sum")


def fgsm(log_probs: LogProbs, x: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    gradient = input_gradient(nll_objective(log_probs, labels), x)
    return (x + epsilon * gradient.sign()).clamp(0, 1).detach()


def pgd(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, epsilon: float, steps: int = 10,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Maximise `objective` (a scalar of the batch) over the eps-ball around x within [0, 1]."""
    step_size = 2.5 * epsilon / steps
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    adversarial = (x + epsilon * (2 * noise - 1)).clamp(0, 1)
    for _ in range(steps):
        gradient = input_gradient(objective, adversarial)
        adversarial = adversarial + step_size * gradient.sign()
        adversarial = torch.minimum(torch.maximum(adversarial, x - epsilon), x + epsilon).clamp(0, 1)
    return adversarial.detach()


def robust_accuracy(log_probs: LogProbs, x: torch.Tensor, labels: torch.Tensor, epsilon: float, attack: str,
                    steps: int = 10, generator: torch.Generator | None = None) -> float:
    if attack == "fgsm":
        adversarial = fgsm(log_probs, x, labels, epsilon)
    else:
        adversarial = pgd(nll_objective(log_probs, labels), x, epsilon, steps, generator)
    with torch.no_grad():
        return float((log_probs(adversarial).argmax(dim=1) == labels).float().mean())


def robustness_metrics(log_probs: LogProbs, x: torch.Tensor, labels: torch.Tensor, steps: int = 10,
                       epsilons: tuple[float, ...] = EVAL_EPSILONS, seed: int = 0) -> dict[str, float]:
    metrics = {}
    for epsilon in epsilons:
        generator = torch.Generator().manual_seed(seed)
        metrics[f"rob_fgsm@{epsilon:g}"] = robust_accuracy(log_probs, x, labels, epsilon, "fgsm")
        metrics[f"rob_pgd@{epsilon:g}"] = robust_accuracy(log_probs, x, labels, epsilon, "pgd", steps, generator)
    return metrics


# ---------------------------------------------------------------- generation
def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to two sample sets (N, n)."""
    mean_real, mean_fake = real.mean(axis=0), fake.mean(axis=0)
    cov_real = np.atleast_2d(np.cov(real, rowvar=False))
    cov_fake = np.atleast_2d(np.cov(fake, rowvar=False))
    # tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), all symmetric PSD: eigh is enough
    values, vectors = np.linalg.eigh(cov_real)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root @ cov_fake @ root)
    trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mean_real - mean_fake) ** 2).sum() + np.trace(cov_real) + np.trace(cov_fake) - 2 * trace_root)


def per_class_frechet(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
                      n_classes: int) -> float:
    """Frechet distance per class, averaged over the classes."""
    distances = [frechet_distance(real[real_labels == c], fake[fake_labels == c]) for c in range(n_classes)]
    return float(np.mean(distances))


def gaussian_baseline_samples(raw: np.ndarray, labels: np.ndarray, n_classes: int, per_class: int,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Samples of a per-class Gaussian fitted to `raw`: the yardstick for generated samples."""
    rng = np.random.default_rng(seed)
    samples, sample_labels = [], []
    for c in range(n_classes):
        points = raw[labels == c]
        samples.append(rng.multivariate_normal(points.mean(axis=0), np.atleast_2d(np.cov(points, rowvar=False)),
                                               per_class))
        sample_labels.append(np.full(per_class, c))
    return np.concatenate(samples), np.concatenate(sample_labels)


class FourierEmbedding:
    """A fixed feature map for a Frechet distance that sees shape: random Fourier features of a
    Gaussian kernel, phi(x) = sqrt(2 / K) cos(x W + b), W ~ N(0, 1 / s^2), s the median distance
    between training points (fitted on the training split only, seeded: the same map for every
    model compared). FID computes its Frechet distance on Inception features for this reason: on
    raw coordinates the distance sees only means and covariances, which a per-class Gaussian
    fitted to the training data matches exactly; the feature means here are the kernel mean
    embedding, so shape differences move them."""

    def __init__(self, weights: np.ndarray, offsets: np.ndarray):
        self.weights, self.offsets = weights, offsets

    @classmethod
    def fit(cls, train: np.ndarray, dims: int = 64, seed: int = 0, max_points: int = 2000) -> "FourierEmbedding":
        rng = np.random.default_rng(seed)
        points = train[rng.permutation(len(train))[:max_points]].astype(np.float64)
        squared = (points * points).sum(1)
        distances = np.sqrt(np.clip(squared[:, None] + squared[None, :] - 2 * points @ points.T, 0, None))
        scale = float(np.median(distances[distances > 0])) if (distances > 0).any() else 1.0
        return cls(rng.normal(0.0, 1.0 / scale, (train.shape[1], dims)), rng.uniform(0, 2 * np.pi, dims))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(2.0 / len(self.offsets)) * np.cos(x.astype(np.float64) @ self.weights + self.offsets)


def per_class_frechet_features(embed: FourierEmbedding, real: np.ndarray, real_labels: np.ndarray,
                               fake: np.ndarray, fake_labels: np.ndarray, n_classes: int) -> float:
    """`per_class_frechet` on the embedded samples."""
    return per_class_frechet(embed(real), real_labels, embed(fake), fake_labels, n_classes)


# ---------------------------------------------------------------- shape-sensitive yardsticks
def energy_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| of two sample sets (N, n): zero only
    for equal distributions, so unlike the Frechet distance it sees more than two moments."""
    def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0, None)).mean())

    return 2 * mean_distance(real, fake) - mean_distance(real, real) - mean_distance(fake, fake)


def per_class_energy(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
                     n_classes: int) -> float:
    return float(np.mean([energy_distance(real[real_labels == c], fake[fake_labels == c]) for c in range(n_classes)]))


def gaussian_baseline_nll(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, y: np.ndarray,
                          n_classes: int, ridge: float = 1e-6) -> float:
    """-log p(x, c) in nats per example under per-class Gaussians (and class frequencies) fitted to
    the training split: the generative NLL of the Gaussian baseline, in the units of gen_nll when
    given the scaled inputs. `ridge` on the diagonal keeps a constant feature finite."""
    total = 0.0
    for c in range(n_classes):
        points, queries = train_x[train_y == c].astype(np.float64), x[y == c].astype(np.float64)
        mean = points.mean(axis=0)
        cov = np.atleast_2d(np.cov(points, rowvar=False)) + ridge * np.eye(points.shape[1])
        _, log_det = np.linalg.slogdet(cov)
        centred = queries - mean
        mahalanobis = np.einsum("ni,ni->n", centred, np.linalg.solve(cov, centred.T).T)
        log_density = -0.5 * (mahalanobis + log_det + points.shape[1] * np.log(2 * np.pi))
        total -= (log_density + np.log(np.mean(train_y == c))).sum()
    return float(total / len(y))
