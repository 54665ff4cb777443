"""The amplitude contraction psi(x, c) of the MPS, forward and backward written by hand.

    psi(x, c) = l^T M_1(x_1) ... M_L(x_L) A_label[:, c, :] M_{L+1}(x_{L+1}) ... M_n(x_n) r,
    M_i(x) = sum_s phi_s(x) A_i[:, s, :]

The chain is folded at the label site: the left half is read from l towards the label as
M_1 ... M_L, the right half from r towards the label as M_n^T ... M_{L+1}^T (since
r^T M_n^T ... M_{L+1}^T = (M_{L+1} ... M_n r)^T). The two halves then run side by side as one
batch of 2B vector chains of k = ceil(n / 2) steps (an odd n pads the left half with one identity
matrix, which phi_0 = 1 makes exact). A step never forms the site matrices: u_i = u_{i-1} M_i(x_i)
is the outer product phi(x_i) (x) u_{i-1} times the core read as a (d*D, D) matrix, one
elementwise product and one matmul per half for all B examples: k d D^2 work per example, where
a pairwise (log-depth) product of the site matrices costs k D^3 and many more kernel calls.

Why by hand: at D ~ 10 a step is small, and autograd's bookkeeping around a few hundred such
operations (the steps, the folding, the label contraction) costs more than the arithmetic.
Forward writes every step straight into preallocated buffers; backward runs the same recurrence
from the label end, h_{i-1} = M_i h_i, and the core gradient of every step is one matmul of the
saved outer products with h (no (k, 2B, D, D) tensor is ever formed, forward or backward).

Scale: the feature cores are used divided by their norms, so a site matrix has norm at most
|phi(x)| (a small constant of the feature map), and the chain vectors are rescaled to unit norm
every `RESCALE_EVERY` steps. The amplitude comes back as (psi_hat, log_scale) with
psi = exp(log_scale) psi_hat. The norms and rescalings are constants of the backward pass: every
quantity trained on is a log of psi (whose gradient a constant factor does not change) or is
invariant to the scale (p(c | x)), so the gradients are exact; log_scale carries no gradient.
"""
from __future__ import annotations

import torch

TINY = 1e-30
# |M_i| <= |phi(x_i)| <= d with unit cores, and a unit near-identity core shrinks a vector by
# about 1/sqrt(D): 16 unscaled steps stay inside float32 for d <= 64 and D <= 512
RESCALE_EVERY = 16


def rescaled(step: int, length: int) -> bool:
    """Steps after which the chain vectors are rescaled: every RESCALE_EVERY, and the last."""
    return step % RESCALE_EVERY == RESCALE_EVERY - 1 or step == length - 1


# ---------------------------------------------------------------- folding the chain at the label
def fold(features: torch.Tensor, cores: torch.Tensor, label_position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """features (B, n, d), cores (n, D, d, D) -> per step and half: features (k, 2, B, d) and
    cores (k, 2, D, d, D), the right half reversed and its cores transposed."""
    batch, n_features, dim = features.shape
    left_cores, right_cores = cores[:label_position], cores[label_position:].flip(0).transpose(1, 3)
    left_features, right_features = features[:, :label_position], features[:, label_position:].flip(1)
    if n_features % 2:  # only the s = 0 slice is I, and phi_0 = 1: the pad matrix is exactly I
        pad = torch.zeros_like(cores[:1])
        pad[0, :, 0, :] = torch.eye(cores.shape[-1], dtype=cores.dtype, device=cores.device)
        left_cores = torch.cat([pad, left_cores])
        left_features = torch.cat([features.new_ones(batch, 1, dim), left_features], dim=1)
    chain_features = torch.stack([left_features, right_features]).permute(2, 0, 1, 3).contiguous()
    return chain_features, torch.stack([left_cores, right_cores], dim=1)


def unfold_cores(grad: torch.Tensor, n_features: int, label_position: int) -> torch.Tensor:
    """Inverse of `fold` for core gradients: (k, 2, D, d, D) -> (n, D, d, D)."""
    left = grad[n_features % 2:, 0]
    right = grad[:, 1].transpose(1, 3).flip(0)
    return torch.cat([left, right])


def unfold_features(grad: torch.Tensor, n_features: int) -> torch.Tensor:
    """Inverse of `fold` for feature gradients: (k, 2, B, d) -> (B, n, d)."""
    left = grad[n_features % 2:, 0].transpose(0, 1)
    right = grad[:, 1].flip(0).transpose(0, 1)
    return torch.cat([left, right], dim=1)


# ---------------------------------------------------------------- the vector chains
def chain_forward(features: torch.Tensor, cores: torch.Tensor, boundary: torch.Tensor):
    """u_i = u_{i-1} M_i(x_i) from u_0 = boundary, for chains of k steps and H halves.

    features (k, H, B, d), cores (k, H, D, d, D). M_i is never formed: with the outer product
    w = phi(x_i) (x) u_{i-1} (B, d*D), u_i = w A_i, where A_i is read as a (d*D, D) matrix, so a
    step is one elementwise product and one matmul per half (not a batch of B tiny matmuls).
    Returns the prefixes u_0..u_k (k+1, H, B, D), the outer products (k, H, B, d, D), which are
    also what the core gradient needs, and the rescaling after every step (k, H, B, 1), 1 where none.
    """
    length, halves, batch, dim = features.shape
    bond = cores.shape[-1]
    by_input = cores.permute(0, 1, 3, 2, 4).reshape(length, halves, dim * bond, bond)
    prefixes = features.new_empty(length + 1, halves, batch, bond)
    prefixes[0] = boundary
    outers = features.new_empty(length, halves, batch, dim, bond)
    scales = features.new_ones(length, halves, batch, 1)
    # every view the loop needs, made once: a view per step costs as much as the step's product
    phis, rows = features.unsqueeze(-1).unbind(0), prefixes.unsqueeze(-2).unbind(0)
    outer_views, flat_outers = outers.unbind(0), outers.view(length, halves, batch, dim * bond).unbind(0)
    vectors, matrices = prefixes.unbind(0), by_input.unbind(0)
    for step in range(length):
        torch.mul(phis[step], rows[step], out=outer_views[step])
        torch.bmm(flat_outers[step], matrices[step], out=vectors[step + 1])
        if rescaled(step, length):
            scales[step] = torch.linalg.vector_norm(vectors[step + 1], dim=-1, keepdim=True).clamp_min_(TINY)
            vectors[step + 1].div_(scales[step])
    return prefixes, outers, scales


def chain_backward(features: torch.Tensor, cores: torch.Tensor, scales: torch.Tensor,
                   grad_last: torch.Tensor) -> torch.Tensor:
    """h_i = dL/d(u_{i-1} M_i), the gradient before step i's rescaling, (k, H, B, D):
    h_{i-1} = M_i h_i = (phi(x_i) (x) h_i) A_i^T, with A_i read as a (D, d*D) matrix."""
    length, halves, batch, dim = features.shape
    bond = cores.shape[-1]
    by_output = cores.reshape(length, halves, bond, dim * bond).transpose(2, 3)
    steps = features.new_empty(length, halves, batch, bond)
    steps[-1] = grad_last / scales[-1]
    outer = features.new_empty(halves, batch, dim, bond)
    flat_outer = outer.view(halves, batch, dim * bond)
    phis, rows, vectors = features.unsqueeze(-1).unbind(0), steps.unsqueeze(-2).unbind(0), steps.unbind(0)
    matrices = by_output.unbind(0)
    for step in reversed(range(1, length)):
        torch.mul(phis[step], rows[step], out=outer)
        torch.bmm(flat_outer, matrices[step], out=vectors[step - 1])
        if rescaled(step - 1, length):
            vectors[step - 1].div_(scales[step - 1])
    return steps


# ---------------------------------------------------------------- the amplitude
class AmplitudeContraction(torch.autograd.Function):
    """(features (B, n, d), cores (n, D, d, D), label core (D, C, D), boundary (D,), L) ->
    psi_hat (B, C), log_scale (B,). See the module docstring."""

    @staticmethod
    def forward(ctx, features, cores, label_core, boundary, label_position):
        batch, n_features, dim = features.shape
        bond, classes = cores.shape[-1], label_core.shape[1]
        norms = torch.linalg.vector_norm(cores, dim=(1, 2, 3)).clamp_min(TINY)
        chain_features, chain_cores = fold(features, cores / norms[:, None, None, None], label_position)
        prefixes, outers, scales = chain_forward(chain_features, chain_cores, boundary)
        left, right = prefixes[-1]
        projected = (left @ label_core.reshape(bond, classes * bond)).reshape(batch, classes, bond)  # l^T A_c
        psi_hat = (projected * right[:, None, :]).sum(dim=-1)
        log_scale = scales.log().sum(dim=(0, 1))[:, 0] + norms.log().sum()
        ctx.save_for_backward(chain_features, chain_cores, norms, prefixes, outers, scales, label_core, projected)
        ctx.label_position = label_position
        return psi_hat, log_scale

    @staticmethod
    def backward(ctx, grad_psi, grad_log_scale):
        chain_features, chain_cores, norms, prefixes, outers, scales, label_core, projected = ctx.saved_tensors
        length, halves, batch, dim = chain_features.shape
        bond, classes, n_features = chain_cores.shape[-1], label_core.shape[1], norms.shape[0]
        left, right = prefixes[-1]
        # the label site: psi_c = l^T A_c r
        weighted_right = (grad_psi[:, :, None] * right[:, None, :]).reshape(batch, classes * bond)
        grad_label = (left.T @ weighted_right).reshape(bond, classes, bond)
        grad_left = weighted_right @ label_core.reshape(bond, classes * bond).T
        grad_right = (grad_psi[:, :, None] * projected).sum(dim=1)
        steps = chain_backward(chain_features, chain_cores, scales, torch.stack([grad_left, grad_right]))
        # per step and half: dA[l, s, r] = sum_b (phi (x) u)[b, s, l] h[b, r], dphi_s = u^T A_s h
        after = steps.reshape(length * halves, batch, bond)
        grad_features = grad_cores = None
        if ctx.needs_input_grad[1]:
            before = outers.reshape(length * halves, batch, dim * bond)
            grad_chain = torch.bmm(before.transpose(1, 2), after).reshape(length, halves, dim, bond, bond)
            grad_cores = unfold_cores(grad_chain.transpose(2, 3), n_features, ctx.label_position)
            grad_cores = grad_cores / norms[:, None, None, None]
        if ctx.needs_input_grad[0]:
            vectors = prefixes[:-1].reshape(length * halves, batch, bond)
            unit_cores = chain_cores.reshape(length * halves, bond, dim * bond)
            inner = torch.bmm(vectors, unit_cores).reshape(length * halves, batch, dim, bond)
            grad_chain_features = (inner * after[:, :, None, :]).sum(dim=-1).reshape(length, halves, batch, dim)
            grad_features = unfold_features(grad_chain_features, n_features)
        return grad_features, grad_cores, grad_label, None, None
