"""Config pieces shared by the imaging engines (`prism`, `mopie`); pydantic, no torch import.

The engines subclass `ImagingConfig` and add their own keys. Nothing is registered here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from trainers.config import ConfigError, Mode, TrainerConfig

from trainers.imaging.choices import BUILTIN_IMAGES, IMAGE_SUFFIXES, PATTERN_FILE_SUFFIXES, PATTERNS  # noqa: F401
PHYSICAL_KEYS = ("wavelength", "distance", "object_diameter", "dxf")


# metrics computed against the ground truth of a simulation: reported, never a selection metric
TRUTH_METRICS = ("ssim", "psnr", "rmse", "ceiling_ssim", "coverage_ceiling_ssim")


class ImagingConfig(TrainerConfig):
    # the engines set a data measure as their metric (early stopping, best state, checkpoints, Tune)
    metric: str = "residual"
    mode: Mode = "min"
    measurements: Optional[str] = Field(None, min_length=1,
                                        description="PtyLab Fourier-ptychography HDF5 file of measured intensities "
                                                    "(.hdf5/.h5); None = simulate them from `image`")
    # object and grid
    image: str = Field("moon", min_length=1, description="moon, hubble_deep_field, or a PNG/JPEG/TIFF/NPY path")
    obj_size: int = Field(128, ge=16, le=4096, description="object side in px (derived in physical mode)")
    image_size: int = Field(256, ge=16, le=8192, description="grid side N (pupil-plane samples)")
    # physical mode (all four or none), metres: dx = wavelength*distance/(dxf*N), obj_size = D/dx
    wavelength: Optional[float] = Field(None, gt=0, le=1e-3)
    distance: Optional[float] = Field(None, gt=0)
    object_diameter: Optional[float] = Field(None, gt=0)
    dxf: Optional[float] = Field(None, gt=0, description="pupil pixel in metres")
    # sampling
    pattern: str = Field("fermat", min_length=1, description="fermat, random, grid, star, or a .py/.csv/.npy file")
    n_samples: int = Field(193, ge=1, le=1_000_000, description="number of sub-apertures")
    sample_diameter: float = Field(41.0, gt=0, le=8192, description="sub-aperture diameter in px")
    pattern_radius: Optional[float] = Field(None, ge=0, description="largest centre radius in px; None = N/2 - d/2 - 1")
    grid_spacing: Optional[float] = Field(None, gt=0, description="grid pattern spacing in px; None = from n_samples")
    star_lines: int = Field(8, ge=1, le=360, description="rays of the star pattern")
    pattern_seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the random pattern")
    sample_length: float = Field(0.0, ge=0, description="line (motion) sample length in px; 0 = points")
    line_angle: Optional[float] = Field(None, ge=-360, le=360, description="line direction in deg; None = tangential")
    samples_per_line_meas: int = Field(1, ge=1, le=1001, description="positions per line in the measurement (odd)")
    samples_per_line_rec: int = Field(1, ge=1, le=1001, description="positions per line in the model (odd)")
    # noise
    snr: Optional[float] = Field(None, ge=-20, le=200, description="SNR in dB of the intensities; None = noise-free")
    noise: Literal["poisson", "gaussian"] = "gaussian"
    noise_seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("image")
    @classmethod
    def _image_name_or_file(cls, value: str) -> str:
        if value not in BUILTIN_IMAGES and Path(value).suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"must be one of {', '.join(BUILTIN_IMAGES)} or a {'/'.join(IMAGE_SUFFIXES)} file")
        return value

    @field_validator("metric")
    @classmethod
    def _metric_from_data(cls, value: str) -> str:
        if value.startswith(("test_", "final_test_")) or value in TRUTH_METRICS:
            raise ValueError(f"{value!r} reads the ground truth, which measured data do not have; select by a "
                             "data measure (residual; prism also val_loss)")
        return value

    @field_validator("measurements")
    @classmethod
    def _hdf5(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and Path(value).suffix.lower() not in (".hdf5", ".h5"):
            raise ValueError("must be a PtyLab .hdf5 / .h5 file")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern_name_or_file(cls, value: str) -> str:
        if value not in PATTERNS and Path(value).suffix.lower() not in PATTERN_FILE_SUFFIXES:
            raise ValueError(f"must be one of {', '.join(PATTERNS)} or a {'/'.join(PATTERN_FILE_SUFFIXES)} file")
        return value

    @field_validator("samples_per_line_meas", "samples_per_line_rec")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd (the line's centre is one of its positions)")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        given = [k for k in PHYSICAL_KEYS if getattr(self, k) is not None]
        if given and len(given) != len(PHYSICAL_KEYS):
            missing = [k for k in PHYSICAL_KEYS if getattr(self, k) is None]
            raise ValueError(f"physical mode needs all of {', '.join(PHYSICAL_KEYS)}; missing {', '.join(missing)}")
        if self.object_size_px() > self.image_size:
            raise ValueError(f"the object ({self.object_size_px()} px) must fit in image_size ({self.image_size})")
        if self.sample_diameter >= self.image_size / 2:
            raise ValueError(f"sample_diameter ({self.sample_diameter}) must be < image_size/2 ({self.image_size / 2})")
        limit = self.image_size / 2 - 1
        if self.radius_px() + self.sample_length / 2 + self.sample_diameter / 2 > limit:
            raise ValueError(f"pattern_radius + sample_length/2 + sample_diameter/2 must be <= {limit} "
                             "so that every aperture stays inside the grid")
        return self

    def object_size_px(self) -> int:
        """obj_size, or D/dx in physical mode (the same rounding as objects.physical_object_size)."""
        if self.wavelength is None:
            return self.obj_size
        dx = self.wavelength * self.distance / (self.dxf * self.image_size)
        return max(1, int(round(self.object_diameter / dx)))

    def radius_px(self) -> float:
        """pattern_radius, or the largest radius that keeps apertures inside the grid."""
        if self.pattern_radius is not None:
            return self.pattern_radius
        return self.image_size / 2 - self.sample_diameter / 2 - 1 - self.sample_length / 2

    def check_files(self) -> None:
        if self.measurements is not None:
            from trainers.imaging.measured import MeasurementError, read_measurements

            try:
                read_measurements(self.measurements, self, None)
            except (MeasurementError, FileNotFoundError, OSError) as error:
                raise ConfigError(f"measurements = {self.measurements!r}: {error}") from None
            return
        if self.image not in BUILTIN_IMAGES:
            from trainers.imaging.objects import read_image

            try:
                read_image(self.image)
            except (ValueError, FileNotFoundError, OSError) as error:
                raise ConfigError(f"image = {self.image!r}: {_reason(error)}") from None
        if self.pattern not in PATTERNS:
            from trainers.imaging.sampling import check_pattern, load_pattern_file

            try:
                points = load_pattern_file(self.pattern, self)
                check_pattern(points, source="pattern", grid=self.image_size, diameter=self.sample_diameter)
            except (ValueError, FileNotFoundError, OSError) as error:
                raise ConfigError(f"pattern = {self.pattern!r}: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    """The error's first line without the repeated 'image PATH:' prefix."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.split(": ", 1)[1] if text.startswith(("image ", "pattern file ", "pattern:")) and ": " in text else text
