"""The Born machine: one open-boundary MPS that both classifies and generates.

The chain has one site per input feature (physical dimension d = `feature_dim`) and one label
site (dimension = number of classes) in the middle. With the embedded input phi(x_i) every
feature site becomes a D x D matrix M_i(x_i) = sum_s phi_s(x_i) A_i[:, s, :], and

    psi(x, c) = l^T  M_1(x_1) ... M_L(x_L)  A_label[:, c, :]  M_{L+1}(x_{L+1}) ... M_n(x_n)  r

with fixed boundary vectors l, r. From psi:

- classifier  p(c | x) = psi(x, c)^2 / sum_c' psi(x, c')^2   (square, then normalise);
- generator   p(x, c)  = psi(x, c)^2 / Z, Z = sum_c Z_c, Z_c = integral psi(x, c)^2 dx, exact:
  the feature map is orthonormal, so the integral is the MPS contracted with itself;
- sampler     exact ancestral sampling site by site on a grid, differentiable in the cores.

Numerics: a product of 64 matrices under- or overflows float32 (unscaled, amplitudes of
1e-118 and an NLL stuck at -log eps are the result). Every partial product here is rescaled and the log of the
scale is carried along, so psi is held as (psi_hat, log_scale) with psi = exp(log_scale) psi_hat
and |psi_hat| of order one. The amplitude's contraction, forward and backward, is written by hand
in contraction.py (speed); Z and the sampler use plain autograd. The feature cores are ONE parameter
(n, D, d, D) and the label core another: the classifier, the generator and the sampler all read
the same tensors (no second copy to keep in sync).
"""
from __future__ import annotations

import torch
from torch import nn

from trainers.bornmachine.contraction import TINY, AmplitudeContraction
from trainers.bornmachine.features import embed

TASKS = ("classify", "joint", "sample")
# the bond dimension at which the MPS's Adam learning rate is the configured one (see bond_scaled_lr)
REFERENCE_BOND = 10


def bond_scaled_lr(lr: float, bond_dim: int) -> float:
    """Adam's learning rate for the cores: lr x REFERENCE_BOND / D.

    Adam moves every entry of a core by about lr per step whatever its gradient's size, and the
    entries of one D x D site matrix move together (the gradient of a site is nearly an outer
    product u h^T of its left and right chain vectors), so one step changes the matrix's action on
    the chain by about lr x D. With a constant lr a wider bond takes proportionally larger steps:
    on MNIST-14 (196 sites) D = 50 and 100 ended far below D = 10 and 20 at lr 1e-3, and they
    order correctly (no worse with D) once the step is divided by D.
    """
    return lr * REFERENCE_BOND / bond_dim



# ---------------------------------------------------------------- stable contraction pieces
def unit_norm(tensor: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide by the Frobenius norm over `dims`; return the unit tensor and the log of the norm.

    The norm is a detached constant. Every quantity we differentiate is a log of a product
    (log psi^2, log Z) or invariant to scale (p(c | x)), and the log of (X / constant) has the
    gradient of log X: the gradients stay exact (contraction.py does the same for psi), and the
    backward pass skips the reductions of a division by a tensor.
    """
    with torch.no_grad():
        norm = torch.linalg.vector_norm(tensor, dim=dims, keepdim=True).clamp_min(TINY)
    return tensor / norm, norm.log().reshape(norm.shape[: tensor.dim() - len(dims)])


def log_probs_from_amplitudes(psi_hat: torch.Tensor) -> torch.Tensor:
    """log p(c | x) from amplitudes (B, C): square then normalise, not a softmax of psi.

    Dividing by the largest |psi| first keeps a sample whose amplitudes are all tiny finite, and
    an all-zero sample gets the uniform distribution instead of 0/0. The divisor is detached:
    p(c | x) does not depend on it.
    """
    largest = psi_hat.detach().abs().amax(dim=1, keepdim=True).clamp_min(TINY)
    return torch.log_softmax(((psi_hat / largest).square() + TINY).log(), dim=1)


def inverse_cdf(density: torch.Tensor, grid: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one value per row from densities (B, G) tabulated on a uniform grid (G,).

    The CDF is the trapezoid rule on the grid and the inverse interpolates linearly between grid
    points, so the draw is a differentiable function of the density values: gradients reach
    the cores through the two CDF values around each draw and the normaliser.
    """
    cells = 0.5 * (density[:, 1:] + density[:, :-1])
    cdf = torch.cat([density.new_zeros(density.shape[0], 1), cells.cumsum(dim=1)], dim=1)
    cdf = cdf / cdf[:, -1:].clamp_min(TINY)
    index = torch.searchsorted(cdf.detach(), uniforms[:, None].contiguous()).squeeze(1) - 1
    index = index.clamp(0, grid.numel() - 2)
    below = cdf.gather(1, index[:, None]).squeeze(1)
    above = cdf.gather(1, index[:, None] + 1).squeeze(1)
    fraction = ((uniforms - below) / (above - below).clamp_min(TINY)).clamp(0, 1)
    return grid[index] + fraction * (grid[1] - grid[0])


# ---------------------------------------------------------------- the model
class BornMachine(nn.Module):
    """MPS with a label site in the middle; see the module docstring for what it computes."""

    def __init__(self, n_features: int, n_classes: int, feature_dim: int = 3, bond_dim: int = 10,
                 feature_map: str = "fourier", init_noise: float = 1e-2, grid_size: int = 200):
        super().__init__()
        if n_features < 1 or n_classes < 2:
            raise ValueError(f"need >= 1 feature and >= 2 classes, got {n_features} and {n_classes}")
        self.n_features, self.n_classes = n_features, n_classes
        self.feature_dim, self.bond_dim = feature_dim, bond_dim
        self.feature_map, self.grid_size = feature_map, grid_size
        self.label_position = n_features // 2  # features left of the label site
        # Start: feature cores near the identity (M_i(x) = I + noise, phi_0 = 1), so chains of any
        # length start O(1) and every input starts near the same boundary vector; a random label
        # core, so classes differ from the first step; boundary vectors spread over all bond
        # channels, so every channel gets gradient at once. (An identity label core with e_0
        # boundaries starts as a product state with identical classes: on digits it stalled for
        # epochs and then trained erratically.)
        identity = torch.eye(bond_dim)
        cores = torch.zeros(n_features, bond_dim, feature_dim, bond_dim)
        cores[:, :, 0, :] = identity
        self.cores = nn.Parameter(cores + init_noise * torch.randn_like(cores))
        self.label_core = nn.Parameter(torch.randn(bond_dim, n_classes, bond_dim) / bond_dim**0.5)
        self.register_buffer("boundary", torch.full((bond_dim,), bond_dim**-0.5))  # closes both ends

    # ----- one entry point, so that DDP sees every loss go through forward()
    def forward(self, x: torch.Tensor | None = None, task: str = "classify", labels: torch.Tensor | None = None,
                uniforms: torch.Tensor | None = None):
        """classify: log p(c|x) (B, C); joint: (log psi(x,c)^2 (B, C), log Z_c (C,));
        sample: x ~ p(x | labels) (B, n) from the given uniforms (B, n), differentiable."""
        if task == "classify":
            return self.class_log_probs(x)
        if task == "joint":
            return self.log_psi_squared(x), self.log_partition_per_class()
        if task == "sample":
            return self.sample(labels, uniforms)
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return embed(x, self.feature_dim, self.feature_map)

    # ----- amplitudes
    def amplitudes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, n) in [0, 1] -> psi_hat (B, C) and log_scale (B,): psi = exp(log_scale) psi_hat."""
        return AmplitudeContraction.apply(self.embed(x), self.cores, self.label_core, self.boundary,
                                          self.label_position)

    def class_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        psi_hat, _ = self.amplitudes(x)
        return log_probs_from_amplitudes(psi_hat)

    def log_psi_squared(self, x: torch.Tensor) -> torch.Tensor:
        """log psi(x, c)^2 for every class (B, C), floored at log TINY^2 relative to the scale."""
        psi_hat, log_scale = self.amplitudes(x)
        return 2 * log_scale[:, None] + psi_hat.square().clamp_min(TINY).log()

    # ----- exact normalisation by self-contraction
    def left_environment(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The doubled chain left of the label site, integrated over its features: (D, D), log scale."""
        environment = torch.outer(self.boundary, self.boundary)
        log_scale = environment.new_zeros(())
        for site in range(self.label_position):
            core = self.cores[site]
            environment = torch.einsum("ab,asx,bsy->xy", environment, core, core)
            environment, log_norm = unit_norm(environment, (-2, -1))
            log_scale = log_scale + log_norm
        return environment, log_scale

    def right_environment(self) -> tuple[torch.Tensor, torch.Tensor]:
        environment = torch.outer(self.boundary, self.boundary)
        log_scale = environment.new_zeros(())
        for site in reversed(range(self.label_position, self.n_features)):
            environment, log_norm = unit_norm(transfer_right(self.cores[site], environment), (-2, -1))
            log_scale = log_scale + log_norm
        return environment, log_scale

    def log_partition_per_class(self) -> torch.Tensor:
        """log Z_c (C,): integral of psi(x, c)^2 over [0, 1]^n, exact (orthonormal feature map)."""
        left, log_left = self.left_environment()
        right, log_right = self.right_environment()
        z_hat = torch.einsum("ab,acx,bcy,xy->c", left, self.label_core, self.label_core, right)
        return log_left + log_right + z_hat.clamp_min(TINY).log()

    def log_partition(self) -> torch.Tensor:
        """log Z = log sum_c Z_c: the normaliser of p(x, c)."""
        return torch.logsumexp(self.log_partition_per_class(), dim=0)

    # ----- sampling
    def right_environments(self) -> list[torch.Tensor]:
        """For every feature site j, the doubled chain right of j integrated out, per class
        (C, D, D): the label leg is fixed to c on both layers where the label lies right of j."""
        bond, classes = self.bond_dim, self.n_classes
        environment = torch.outer(self.boundary, self.boundary).expand(classes, bond, bond)
        environments: list[torch.Tensor] = [environment] * self.n_features
        for site in reversed(range(self.n_features)):
            environments[site] = environment
            core = self.cores[site]
            environment = torch.einsum("asx,cxy,bsy->cab", core, environment, core)
            if site == self.label_position:  # the label site sits just left of this feature
                environment = torch.einsum("acx,cxy,bcy->cab", self.label_core, environment, self.label_core)
            environment, _ = unit_norm(environment, (-2, -1))  # conditionals ignore the scale
        return environments

    def grid(self) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, self.grid_size, dtype=self.cores.dtype, device=self.cores.device)

    def sample(self, labels: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Exact ancestral sampling x ~ p(x | c): feature by feature in chain order, each from its
        conditional density given the features drawn so far and c, with the rest integrated out.

        The conditional of x_j is w(x_j)^T R_j w(x_j) with w(x_j) = v^T M_j(x_j), v the chain of
        drawn values (an amplitude, one layer) and R_j the doubled environment to the right.
        Tabulated on the grid and drawn by inverse CDF, from `uniforms` (B, n) in [0, 1).
        """
        grid = self.grid()
        grid_features = self.embed(grid)                                        # (G, d)
        environments = self.right_environments()
        vector = self.boundary.expand(labels.shape[0], self.bond_dim)
        drawn = []
        for site in range(self.n_features):
            if site == self.label_position:
                vector, _ = unit_norm(torch.einsum("bl,lbr->br", vector, self.label_core[:, labels, :]), (-1,))
            partial = torch.einsum("bl,lsr->bsr", vector, self.cores[site])       # (B, d, D)
            environment = environments[site][labels]                             # (B, D, D)
            kernel = torch.einsum("bsx,bxy,bty->bst", partial, environment, partial)  # (B, d, d)
            density = torch.einsum("gs,bst,gt->bg", grid_features, kernel, grid_features).clamp_min(0)
            value = inverse_cdf(density, grid, uniforms[:, site])
            vector, _ = unit_norm(torch.einsum("bs,bsr->br", self.embed(value), partial), (-1,))
            drawn.append(value)
        return torch.stack(drawn, dim=1)

    def conditional_density(self, labels: torch.Tensor, prefix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """p(x_j = points | x_<j = prefix, c) with j = prefix.shape[1], normalised exactly
        (the trace of the kernel is its integral): (B, P). For tests and inspection."""
        site = prefix.shape[1]
        vector = self.boundary.expand(labels.shape[0], self.bond_dim)
        for previous in range(site + 1):
            if previous == self.label_position:
                vector = torch.einsum("bl,lbr->br", vector, self.label_core[:, labels, :])
            if previous == site:
                break
            matrices = torch.einsum("bs,lsr->blr", self.embed(prefix[:, previous]), self.cores[previous])
            vector = torch.einsum("bl,blr->br", vector, matrices)
        partial = torch.einsum("bl,lsr->bsr", vector, self.cores[site])
        kernel = torch.einsum("bsx,bxy,bty->bst", partial, self.right_environments()[site][labels], partial)
        features = self.embed(points)
        density = torch.einsum("ps,bst,pt->bp", features, kernel, features)
        return density / torch.diagonal(kernel, dim1=1, dim2=2).sum(dim=1, keepdim=True)


def transfer_right(core: torch.Tensor, environment: torch.Tensor) -> torch.Tensor:
    """Integrate one feature site into a right environment: sum_s A_s E A_s^T."""
    return torch.einsum("asx,xy,bsy->ab", core, environment, core)
