"""Sampling patterns of aperture centres, line ("motion") samples, coverage, and the ceiling.

Every pattern returns float32 [y, x] centres in pixels from DC, shape (n, 2), with the first
centre at DC and the rest in increasing radius (progressive engines grow outwards). Line samples
are (n, 2, 2) segment ends; `line_positions` turns them into (n, k, 2) positions for `measure`.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.imaging.choices import PATTERN_FILE_SUFFIXES, PATTERNS
from trainers.imaging.forward import pad_to_grid, pupil_masks, to_image, to_spectrum

GOLDEN_ANGLE_DEG = 137.508


def default_radius(grid: int, diameter: float) -> float:
    """Largest centre radius whose aperture stays inside the grid: N/2 - d/2 - 1."""
    return grid / 2 - diameter / 2 - 1


# ---------------------------------------------------------------- point patterns
def fermat_pattern(n: int, radius: float) -> torch.Tensor:
    """Fermat (sunflower) spiral: r_i = R sqrt(i/n), angle i * 137.508 deg, i = 0..n-1."""
    _check_count(n)
    i = torch.arange(n, dtype=torch.float64)
    r = radius * torch.sqrt(i / n)
    theta = torch.deg2rad(i * GOLDEN_ANGLE_DEG)
    return torch.stack([r * torch.sin(theta), r * torch.cos(theta)], dim=1).float()


def random_pattern(n: int, radius: float, seed: int = 0) -> torch.Tensor:
    """Uniform in the disc of `radius` (r = R sqrt(u)), first at DC, sorted by radius."""
    _check_count(n)
    generator = torch.Generator().manual_seed(seed)
    u, angle = torch.rand(2, n - 1, generator=generator, dtype=torch.float64)
    r = radius * torch.sqrt(u)
    theta = 2 * math.pi * angle
    points = torch.stack([r * torch.sin(theta), r * torch.cos(theta)], dim=1)
    points = torch.cat([points.new_zeros(1, 2), points])
    return _sort_by_radius(points).float()


def grid_pattern(radius: float, spacing: float) -> torch.Tensor:
    """Square lattice of `spacing` through DC, the points within `radius`, sorted by radius."""
    if spacing <= 0:
        raise ValueError(f"grid spacing must be > 0, got {spacing}")
    steps = int(math.floor(radius / spacing))
    axis = torch.arange(-steps, steps + 1, dtype=torch.float64) * spacing
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([yy.flatten(), xx.flatten()], dim=1)
    points = points[points.norm(dim=1) <= radius + 1e-9]
    return _sort_by_radius(points).float()


def grid_spacing_for(n: int, radius: float) -> float:
    """The lattice spacing that puts about n points in the disc: pi R^2 / s^2 = n."""
    _check_count(n)
    return radius * math.sqrt(math.pi / n)


def star_pattern(n_lines: int, radius: float, points_per_line: int) -> torch.Tensor:
    """DC plus `n_lines` rays at equal angles, `points_per_line` equally spaced out to `radius`."""
    if n_lines < 1 or points_per_line < 1:
        raise ValueError(f"star needs n_lines >= 1 and points_per_line >= 1, got {n_lines}, {points_per_line}")
    r = torch.arange(1, points_per_line + 1, dtype=torch.float64) * radius / points_per_line
    theta = torch.arange(n_lines, dtype=torch.float64) * 2 * math.pi / n_lines
    ys = r[None, :] * torch.sin(theta)[:, None]
    xs = r[None, :] * torch.cos(theta)[:, None]
    points = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    points = torch.cat([points.new_zeros(1, 2), points])
    return _sort_by_radius(points).float()


def generate_pattern(name: str, n_samples: int, radius: float, *, seed: int = 0,
                     grid_spacing: float | None = None, star_lines: int = 8) -> torch.Tensor:
    """A named pattern with about `n_samples` centres (exactly n for fermat/random/star-ceil)."""
    if name == "fermat":
        return fermat_pattern(n_samples, radius)
    if name == "random":
        return random_pattern(n_samples, radius, seed)
    if name == "grid":
        return grid_pattern(radius, grid_spacing or grid_spacing_for(n_samples, radius))
    if name == "star":
        per_line = max(1, math.ceil((n_samples - 1) / star_lines))
        return star_pattern(star_lines, radius, per_line)
    raise ValueError(f"unknown pattern {name!r}; choose one of {', '.join(PATTERNS)} or a "
                     f"{'/'.join(PATTERN_FILE_SUFFIXES)} file")


def _sort_by_radius(points: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(points.norm(dim=1), stable=True)
    return points[order]


def _check_count(n: int) -> None:
    if n < 1:
        raise ValueError(f"a pattern needs at least 1 sample, got {n}")


# ---------------------------------------------------------------- line ("motion") samples
def lines_from_centres(centres: torch.Tensor, length: float, angle_deg: float | None = None) -> torch.Tensor:
    """Segments of `length` px centred on each centre -> (n, 2, 2) ends.

    Direction: `angle_deg` from the +x axis, or when None tangential (perpendicular to the
    radius, the way a rotating baseline sweeps; along +x at DC).
    """
    if length <= 0:
        raise ValueError(f"sample_length must be > 0, got {length}")
    centres = torch.as_tensor(centres, dtype=torch.float32)
    if angle_deg is None:
        theta = torch.atan2(centres[:, 0], centres[:, 1]) + math.pi / 2
        theta = torch.where(centres.norm(dim=1) > 0, theta, torch.zeros_like(theta))
    else:
        theta = torch.full((centres.shape[0],), math.radians(angle_deg))
    half = 0.5 * length * torch.stack([torch.sin(theta), torch.cos(theta)], dim=1)
    return torch.stack([centres - half, centres + half], dim=1)


def line_positions(lines: torch.Tensor, n_points: int) -> torch.Tensor:
    """(n, 2, 2) segment ends -> (n, k, 2) equally spaced positions, ends included (k odd)."""
    if n_points < 1 or n_points % 2 == 0:
        raise ValueError(f"samples per line must be odd and >= 1 (the centre is a position), got {n_points}")
    lines = torch.as_tensor(lines, dtype=torch.float32)
    if n_points == 1:
        return lines.mean(dim=1, keepdim=True)
    t = torch.linspace(0, 1, n_points)[None, :, None]
    return lines[:, :1] * (1 - t) + lines[:, 1:] * t


# ---------------------------------------------------------------- user pattern files
def load_pattern_file(path: str | Path, config: Any = None) -> torch.Tensor:
    """Centres (n, 2) or line ends (n, 2, 2) from a user file.

    `.py`: a module defining `generate_pattern(config)` (the spec's form); `.npy`: an array;
    `.csv`: rows `y,x` (points) or `y0,x0,y1,x1` (lines), an optional header line.
    """
    path = Path(path)
    if path.suffix.lower() not in PATTERN_FILE_SUFFIXES:
        raise ValueError(f"pattern file {path}: unsupported suffix {path.suffix!r}; use "
                         f"{'/'.join(PATTERN_FILE_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"pattern file {path}: file does not exist")
    try:
        array = _read_pattern(path, config)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as error:  # a broken user file: one message naming it
        raise ValueError(f"pattern file {path}: cannot be read ({type(error).__name__}: {error})") from None
    return check_pattern(array, source=f"pattern file {path}")


def _read_pattern(path: Path, config: Any) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".csv":
        try:
            array = np.loadtxt(path, delimiter=",", ndmin=2)
        except ValueError:  # a header line
            array = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)
        return array.reshape(-1, 2, 2) if array.shape[1] == 4 else array
    spec = importlib.util.spec_from_file_location(f"_user_pattern_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "generate_pattern", None)):
        raise ValueError(f"pattern file {path}: defines no function generate_pattern(config)")
    return np.asarray(module.generate_pattern(config), dtype=np.float64)


def check_pattern(points: Any, *, source: str = "pattern", grid: int | None = None,
                  diameter: float | None = None) -> torch.Tensor:
    """Validate (n, 2) centres or (n, 2, 2) lines; with grid and diameter, that apertures fit."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim not in (2, 3) or array.shape[-1] != 2 or (array.ndim == 3 and array.shape[1] != 2):
        raise ValueError(f"{source}: expected (n, 2) centres or (n, 2, 2) line ends, got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{source}: holds no samples")
    if not np.isfinite(array).all():
        raise ValueError(f"{source}: contains NaN or infinite values")
    if grid is not None and diameter is not None:
        reach = np.abs(array).max() + diameter / 2
        if reach > grid / 2 - 1:
            raise ValueError(f"{source}: an aperture reaches {reach:.1f} px from DC, outside the "
                             f"grid of {grid} (limit {grid / 2 - 1:.1f})")
    return torch.from_numpy(array).float()


# ---------------------------------------------------------------- coverage and ceiling
def coverage_mask(positions: torch.Tensor, diameter: float, grid: int, chunk_size: int = 256) -> torch.Tensor:
    """Union (bool N x N) of the pupils at (n, 2) centres or (n, k, 2) line positions."""
    flat = torch.as_tensor(positions, dtype=torch.float32).reshape(-1, 2)
    union = torch.zeros(grid, grid, dtype=torch.bool)
    for start in range(0, flat.shape[0], chunk_size):
        union |= pupil_masks(flat[start:start + chunk_size], diameter, grid).amax(dim=0).bool()
    return union


def band_limited_reference(obj: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """The ground truth low-passed to the measured coverage: the best any engine can recover.

    `obj` is (s, s) or already padded to the coverage's N x N grid; returns the N x N amplitude
    |E| of `to_image(O * coverage)` (a reconstruction is an amplitude, so the modulus).
    """
    grid = coverage.shape[-1]
    padded = obj if obj.shape[-1] == grid else pad_to_grid(obj, grid)
    return to_image(to_spectrum(padded) * coverage.to(torch.float32)).abs()
