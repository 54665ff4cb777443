"""The PPO update, CleanRL style: one function, top to bottom.

For `update_epochs` epochs, over `num_minibatches` shuffled minibatches of the batch:
    normalise the advantages within the minibatch,
    policy loss   = mean(max(-A * r, -A * clip(r, 1 - c, 1 + c))),   r = pi_new(a) / pi_old(a)
    value loss    = 0.5 * mean((V - returns)^2)
    loss          = policy loss - ent_coef * entropy + vf_coef * value loss
    one Adam step after clipping the gradient norm to `max_grad_norm`.
With `target_kl`, the epochs stop once an epoch's mean approximate KL passes it (the ranks
agree on the number first, so that DDP ranks take the same number of steps).
Host syncs: one per epoch (the KL test) and one at the end, none per minibatch.
With `mixed_precision` on CUDA only the network's forward runs under bf16 autocast; its outputs
are cast to float32 first, so log-probs, ratios, losses and metrics are float32 (no GradScaler:
bf16 has float32's range). `model` may be a `torch.compile`d module (the trainer's `train_model`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trainers.selfplay.config import PpoShogiConfig
from trainers.selfplay.game import unpack_features_tensor, unpack_masks_tensor
from trainers.precision import autocast, uses_amp
from trainers.selfplay.network import masked_logits
from trainers.selfplay.runner import ExperienceBatch


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """PPO's policy loss: the pessimistic bound of the unclipped and clipped objectives."""
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
    return torch.max(unclipped, clipped).mean()


def masked_entropy(log_probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Entropy over the legal moves (log-probs are -inf elsewhere: zeroed before multiplying)."""
    safe = log_probs.masked_fill(~masks, 0.0)
    return -(safe.exp() * safe).sum(dim=1)  # exp(0) * 0 = 0 at the illegal labels


def normalise(advantages: torch.Tensor) -> torch.Tensor:
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def ppo_update(model: nn.Module, optimizer: torch.optim.Optimizer, batch: ExperienceBatch, config: PpoShogiConfig,
               generator: torch.Generator, device: torch.device | str = "cpu",
               average: Callable[[dict[str, float]], dict[str, float]] = dict) -> dict[str, float]:
    """One PPO update on `batch` (this rank's shard); returns the update's metrics."""
    device = torch.device(device)
    amp = uses_amp(config.mixed_precision, device)
    # the experience goes to the device once, bit-packed; each minibatch is unpacked there
    features, masks = (torch.from_numpy(batch.features).to(device), torch.from_numpy(batch.masks).to(device))
    actions = torch.from_numpy(batch.actions).to(device)
    old_log_probs = torch.from_numpy(batch.log_probs).to(device)
    advantages = torch.from_numpy(batch.advantages).to(device)
    returns = torch.from_numpy(batch.returns).to(device)
    n = len(batch)
    sums = torch.zeros(5, device=device)  # policy loss, value loss, entropy, approx kl, clip fraction
    steps, epochs_run = 0, 0
    model.train()
    for _ in range(config.update_epochs):
        epoch_kl = torch.zeros((), device=device)
        minibatches = torch.randperm(n, generator=generator).tensor_split(config.num_minibatches)
        for index in minibatches:
            index = index.to(device)
            mb_masks = unpack_masks_tensor(masks[index])
            with autocast(amp):
                logits, values = model(unpack_features_tensor(features[index]))
            logits, values = logits.float(), values.float()  # no-ops in float32
            log_probs = torch.log_softmax(masked_logits(logits, mb_masks), dim=1)
            new_log_probs = log_probs.gather(1, actions[index][:, None]).squeeze(1)
            log_ratio = new_log_probs - old_log_probs[index]
            entropy = masked_entropy(log_probs, mb_masks).mean()

            policy_loss = clipped_surrogate(log_ratio, normalise(advantages[index]), config.clip_coef)
            value_loss = 0.5 * (values - returns[index]).square().mean()
            loss = policy_loss - config.ent_coef * entropy + config.vf_coef * value_loss

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()

            with torch.no_grad():
                ratio = log_ratio.exp()
                approx_kl = ((ratio - 1) - log_ratio).mean()
                clip_fraction = ((ratio - 1).abs() > config.clip_coef).float().mean()
                sums += torch.stack([policy_loss, value_loss, entropy, approx_kl, clip_fraction]).detach()
                epoch_kl += approx_kl / len(minibatches)
            steps += 1
        epochs_run += 1
        if config.target_kl is not None:
            kl = average({"approx_kl": float(epoch_kl)})["approx_kl"]
            if kl > config.target_kl:
                break
    means = (sums / max(1, steps)).tolist()
    returns, values_old = returns.cpu(), torch.from_numpy(batch.values)
    variance = float(returns.var()) if n > 1 else 0.0
    explained = 1.0 - float((returns - values_old).var()) / variance if variance > 0 else float("nan")
    return {"policy_loss": means[0], "value_loss": means[1], "entropy": means[2], "approx_kl": means[3],
            "clip_fraction": means[4], "explained_variance": explained, "update_epochs_run": float(epochs_run)}
