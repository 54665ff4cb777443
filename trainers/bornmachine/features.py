"""Orthonormal feature maps on [0, 1]: the reason integrals over x are exact contractions.

Every input feature is min-max scaled to [0, 1] on the training split; a feature map sends one
scalar to `d` functions phi_0..phi_{d-1} with  integral_0^1 phi_s(x) phi_t(x) dx = delta_st.
Then integral psi(x, c)^2 dx over every feature is the MPS contracted with itself, core by core.
Both maps start with phi_0 = 1, so an embedded input is never the zero vector (the failure a
2-component cos/sin map has at a pixel of exactly 1).

- fourier:  1, sqrt2 cos 2 pi x, sqrt2 sin 2 pi x, sqrt2 cos 4 pi x, ...  (periodic: x = 0 and
  x = 1 get the same embedding, which matters for data whose values sit on both ends)
- legendre: sqrt(2k + 1) P_k(2x - 1), the Legendre polynomials moved from [-1, 1] to [0, 1]
"""
from __future__ import annotations

import math

import torch

FEATURE_MAPS = ("fourier", "legendre")


def fourier_features(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) in [0, 1] -> (..., dim): 1, then cos/sin pairs of rising frequency."""
    columns = [torch.ones_like(x)]
    for index in range(1, dim):
        frequency = (index + 1) // 2
        angle = (2 * math.pi * frequency) * x
        columns.append(math.sqrt(2) * (torch.cos(angle) if index % 2 else torch.sin(angle)))
    return torch.stack(columns, dim=-1)


def legendre_features(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) in [0, 1] -> (..., dim): orthonormal Legendre polynomials by the three-term recurrence."""
    t = 2 * x - 1
    polynomials = [torch.ones_like(t)]
    if dim > 1:
        polynomials.append(t)
    for k in range(1, dim - 1):  # (k + 1) P_{k+1} = (2k + 1) t P_k - k P_{k-1}
        polynomials.append(((2 * k + 1) * t * polynomials[k] - k * polynomials[k - 1]) / (k + 1))
    return torch.stack([math.sqrt(2 * k + 1) * p for k, p in enumerate(polynomials)], dim=-1)


def embed(x: torch.Tensor, dim: int, kind: str = "fourier") -> torch.Tensor:
    if kind == "fourier":
        return fourier_features(x, dim)
    if kind == "legendre":
        return legendre_features(x, dim)
    raise ValueError(f"unknown feature map {kind!r}; choose one of: {', '.join(FEATURE_MAPS)}")
