"""The camera-grid frames shared by the imaging engines: the frame size and the exact
resampling of full-grid intensities to frames (and back, for measured frames).

A field that passed a pupil of diameter d is band-limited to d, so each aperture position
works on an M x M window of the spectrum around its centre: phi = ifft2(O_window * P) is the
image field at the points x = n N/M. Its intensity is band-limited to 2d, which makes point
samples at those points exact for any M (`to_frames`).
"""
from __future__ import annotations

import math

import torch


def auto_frame_size(grid: int, diameter: float, full_band: bool = False) -> int:
    """The camera-grid side M: the smallest 2^a 3^b (fast FFT sizes) >= d + 3, at most the grid.

    d + 3 holds the disc at any sub-pixel offset. Below 2d the frames sample the intensity under
    its Nyquist rate; they stay exact (point samples of a band-limited field, see `to_frames`),
    and the object converges per epoch nearly as with 2d frames (measured on the default
    problem: SSIM 0.976 vs 0.983 after one epoch) for FFTs of a third of the size.
    `full_band` (>= 2d + 2: every intensity sample) is for a learned probe: with fewer samples
    per aperture the probe and the object trade errors and drift (SSIM 0.94 and falling at 48
    px, 0.98 at 96 px, 41 px apertures)."""
    need = 2 * math.ceil(diameter) + 2 if full_band else math.ceil(diameter) + 3
    sizes = (2**a * 3**b for a in range(14) for b in range(9))
    return min(min(size for size in sizes if size >= need), grid)


def to_frames(images: torch.Tensor, frame: int, diameter: float, chunk: int = 32) -> torch.Tensor:
    """Full-grid intensities (n, N, N), centred -> frames (n, M, M) on the camera grid.

    A frame holds the intensity at the points x = n N / M (DC sample at [0, 0]), times (N/M)^2:
    what |ifft2(window * pupil, M, ortho)|^2 of an M x M window of the spectrum gives. The
    intensity is band-limited to |k| <= d (the pupil's autocorrelation), so these samples are
    exact for any M: sum its spectrum over k = b (mod M) and take an M-point inverse FFT. For
    M >= 2d + 1 nothing folds (a Fourier crop); noise outside the band is dropped either way.
    """
    grid = images.shape[-1]
    freq = torch.fft.fftfreq(grid, 1 / grid, device=images.device).round().long()
    in_band = (freq[:, None].square() + freq[None, :].square()).flatten() <= diameter**2 + 1e-6
    band = in_band.nonzero().squeeze(1)
    bins = ((freq % frame)[:, None] * frame + (freq % frame)[None, :]).flatten()[band]
    out = []
    for part in images.split(chunk):
        spectra = torch.fft.fft2(torch.fft.ifftshift(part, dim=(-2, -1)).to(torch.complex64))
        folded = torch.zeros(len(part), frame * frame, dtype=torch.complex64, device=images.device)
        folded.index_add_(1, bins, spectra.flatten(1).index_select(1, band))
        out.append(torch.fft.ifft2(folded.view(-1, frame, frame)).real)
    return torch.cat(out) if out else images.new_zeros(0, frame, frame)




def from_frames(frames: torch.Tensor, grid: int, diameter: float) -> torch.Tensor:
    """Frames (n, M, M) on the camera grid -> full-grid centred intensities (n, N, N): the inverse
    of `to_frames` for M >= 2d + 1 (nothing folded), by placing each in-band frequency of the
    frame's M-point spectrum back on the N grid."""
    count, frame = frames.shape[0], frames.shape[-1]
    if frame < 2 * diameter + 1:
        raise ValueError(f"frames of {frame} px cannot hold intensities band-limited to 2 x {diameter} px "
                         f"(need >= {math.ceil(2 * diameter + 1)})")
    freq = torch.fft.fftfreq(grid, 1 / grid, device=frames.device).round().long()
    in_band = (freq[:, None].square() + freq[None, :].square()).flatten() <= diameter**2 + 1e-6
    band = in_band.nonzero().squeeze(1)
    bins = ((freq % frame)[:, None] * frame + (freq % frame)[None, :]).flatten()[band]
    spectra = torch.fft.fft2(frames.to(torch.complex64)).flatten(1)
    full = torch.zeros(count, grid * grid, dtype=torch.complex64, device=frames.device)
    full[:, band] = spectra.index_select(1, bins)
    images = torch.fft.ifft2(full.view(count, grid, grid)).real
    return torch.fft.fftshift(images, dim=(-2, -1))
