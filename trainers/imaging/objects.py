"""Ground-truth objects: built-in images or an image file, as amplitudes in [0, 1].

The spec's ground truth is the amplitude `sqrt(normalised image)`: real, non-negative, at most 1.
Normalisation is min-max, so every object uses the full [0, 1] range whatever the file's dtype.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainers.imaging.choices import BUILTIN_IMAGES, IMAGE_SUFFIXES


def physical_object_size(wavelength: float, distance: float, object_diameter: float,
                         dxf: float, grid: int) -> tuple[float, int]:
    """Object pixel `dx = wavelength*L/(dxf*N)` and object size `round(D/dx)` in pixels.

    All lengths in metres. Europa (D 3138 km, L 628.3e6 km, 698.9 nm, dxf 1 cm, N 1024) gives 73 px.
    """
    for name, value in (("wavelength", wavelength), ("distance", distance),
                        ("object_diameter", object_diameter), ("dxf", dxf), ("grid", grid)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    dx = wavelength * distance / (dxf * grid)
    return dx, max(1, int(round(object_diameter / dx)))


def read_image(image: str | Path) -> np.ndarray:
    """A 2-D float64 array from a built-in name or a PNG/JPEG/TIFF/NPY path (colour -> grey)."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb

    if isinstance(image, str) and image in BUILTIN_IMAGES:
        array = getattr(skimage.data, image)()
    else:
        array = _read_file(Path(image))
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = rgba2rgb(array)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = rgb2gray(array)
    if array.ndim != 2 or min(array.shape) < 2:
        raise ValueError(f"image {image}: expected a 2-D (or RGB) image, got shape {array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"image {image}: contains NaN or infinite values")
    return array


def _read_file(path: Path) -> np.ndarray:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"image {path}: unsupported suffix {path.suffix!r}; "
                         f"use one of {', '.join(BUILTIN_IMAGES)} or a {'/'.join(IMAGE_SUFFIXES)} file")
    if not path.is_file():
        raise FileNotFoundError(f"image {path}: file does not exist")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        import skimage.io
        return skimage.io.imread(path)
    except Exception as error:  # any decoder error becomes one message naming the file
        raise ValueError(f"image {path}: cannot be read ({type(error).__name__}: {error})") from None


def load_object(image: str | Path = "moon", size: int = 128, *, complex_valued: bool = False,
                wavelength: float | None = None, distance: float | None = None,
                object_diameter: float | None = None, dxf: float | None = None,
                grid: int | None = None) -> torch.Tensor:
    """The ground-truth amplitude, `size` x `size`, in [0, 1] (float32, or complex64 with zero phase).

    With all physical parameters (wavelength, distance, object_diameter, dxf, grid) the size
    comes from `physical_object_size` instead of `size`.
    """
    physical = (wavelength, distance, object_diameter, dxf, grid)
    if any(p is not None for p in physical):
        if any(p is None for p in physical):
            raise ValueError("physical mode needs all of wavelength, distance, object_diameter, dxf, grid")
        _, size = physical_object_size(*physical)
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    array = read_image(image)
    amplitude = np.sqrt(_normalise(_square_resize(array, size)))
    tensor = torch.from_numpy(amplitude.astype(np.float32))
    return tensor.to(torch.complex64) if complex_valued else tensor


def _square_resize(array: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square (no distortion), then resize with anti-aliasing."""
    from skimage.transform import resize

    h, w = array.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = array[top:top + side, left:left + side]
    return resize(square, (size, size), order=1, anti_aliasing=side > size, preserve_range=True)


def _normalise(array: np.ndarray) -> np.ndarray:
    low, high = array.min(), array.max()
    if high <= low:  # a flat image: all ones rather than a division by zero
        return np.ones_like(array)
    return (array - low) / (high - low)
