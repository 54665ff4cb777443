"""Image-quality metrics, one implementation for both engines: SSIM, PSNR, RMSE.

SSIM follows the spec: Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, population
(not sample) covariances, data_range 1 by default. It equals
`skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)`: scikit-image filters the whole image and then
averages the SSIM map without a 5-px border, which is exactly a 'valid' convolution here, so
no padding mode is involved. Computed in float64 (as scikit-image does) for a 1e-6 match.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from trainers.imaging.forward import crop_to_object

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _gaussian_window(dtype, device) -> torch.Tensor:
    x = torch.arange(WINDOW, dtype=dtype, device=device) - WINDOW // 2
    g = torch.exp(-0.5 * (x / SIGMA) ** 2)
    return g / g.sum()


def _filter(images: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of (B, 1, H, W)."""
    images = F.conv2d(images, g.view(1, 1, WINDOW, 1))
    return F.conv2d(images, g.view(1, 1, 1, WINDOW))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of (..., H, W) images (batched over leading axes); needs H, W >= 11."""
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    if min(x.shape[-2:]) < WINDOW:
        raise ValueError(f"ssim: images must be at least {WINDOW} px on each side, got {tuple(x.shape[-2:])}")
    lead = x.shape[:-2]
    x = x.detach().to(torch.float64).reshape(-1, 1, *x.shape[-2:])
    y = y.detach().to(torch.float64).reshape(-1, 1, *y.shape[-2:])
    g = _gaussian_window(torch.float64, x.device)
    # the five local moments in one filtering pass
    moments = _filter(torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(-1, 1, *x.shape[-2:]), g)
    ux, uy, uxx, uyy, uxy = moments.reshape(x.shape[0], 5, *moments.shape[-2:]).unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.mean(dim=(-2, -1)).reshape(lead).float()


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """20 log10(data_range / sqrt(MSE)) in dB over the last two axes (inf when equal)."""
    mse = (x.double() - y.double()).square().mean(dim=(-2, -1))
    return (20 * torch.log10(torch.as_tensor(data_range, dtype=torch.float64)) - 10 * torch.log10(mse)).float()


def rmse(x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Root-mean-square error as a percentage of the ground truth's RMS."""
    diff = (x.double() - truth.double()).square().mean(dim=(-2, -1)).sqrt()
    return (100 * diff / truth.double().square().mean(dim=(-2, -1)).sqrt()).float()


def image_metrics(reconstruction: torch.Tensor, truth: torch.Tensor, obj_size: int | None = None,
                  data_range: float = 1.0) -> dict[str, float]:
    """SSIM, PSNR, RMSE of one reconstruction, both cropped to the object window first.

    Fields that are complex are compared by modulus. `obj_size` None means already cropped.
    """
    def prepare(field: torch.Tensor) -> torch.Tensor:
        field = field.abs() if field.is_complex() else field
        return crop_to_object(field, obj_size) if obj_size is not None else field

    x, t = prepare(reconstruction), prepare(truth)
    values = {"ssim": ssim(x, t, data_range), "psnr": psnr(x, t, data_range), "rmse": rmse(x, t)}
    return {key: float(value) for key, value in values.items()}
