"""Config of the `mopie` engine (batched ePIE / mPIE with a known pupil); pydantic, no torch.

`lr` is the shared "main step size" key of every algorithm; for mopie it IS the object step
alpha, so that a Tune space or a schedule over `lr` drives alpha. `alpha` is accepted as an
alias when the config is built (giving both with different values is an error).
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from trainers.imaging.config import ImagingConfig


class MopieConfig(ImagingConfig):
    metric: str = Field("residual", description="relative L1 misfit of all measured intensities (mode min)")
    lr: float = Field(1.0, gt=0, le=2, description="object step alpha (the shared lr key); 1 = full ePIE step")
    alpha: Optional[float] = Field(None, gt=0, le=2, description="alias of lr at construction; the engine reads lr")
    beta: float = Field(1.0, ge=0, le=2, description="probe step (acts only with learn_probe)")
    learn_probe: bool = Field(False, description="also refine a shared complex pupil inside the known disc")
    momentum: float = Field(0.5, ge=0, lt=1, description="mPIE momentum eta; 0 = plain (batched) ePIE")
    momentum_every: int = Field(0, ge=0, le=100_000,
                                description="mini-batches between momentum steps; 0 = once per epoch")
    constrain_every: int = Field(0, ge=0, le=100_000,
                                 description="mini-batches between real-space constraints (two N x N FFTs); "
                                             "0 = once per epoch (always at the epoch's end)")
    batch_size: int = Field(16, ge=1, le=1_000_000, description="apertures per batched update (1 = sequential ePIE)")
    support: bool = Field(True, description="zero the object outside its obj_size window (with the constraints)")
    value_range: Literal["real", "modulus", "none"] = Field(
        "real", description="real: clamp to real [0, 1] (and store half the Hermitian spectrum); "
                            "modulus: clamp |object| to 1; none")
    frame_size: Optional[int] = Field(None, ge=8, le=8192,
                                      description="camera-grid side M of the per-aperture FFTs (sample_diameter + 2 "
                                                  "to image_size); None = auto (>= d + 3, or >= 2d + 2 with "
                                                  "learn_probe), image_size = full-grid FFTs")
    cuda_graphs: bool = Field(True, description="on one GPU with a known pupil, replay each batch's update and the "
                                                "end-of-epoch steps as CUDA graphs (ignored on a CPU, on several "
                                                "ranks and with learn_probe)")
    max_iterations: int = Field(30, ge=1, le=1_000_000)
    patience: int = Field(5, ge=0, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _alpha_is_lr(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("alpha") is not None:
            alpha = values["alpha"]
            if values.get("lr") is not None and float(values["lr"]) != float(alpha):
                raise ValueError(f"alpha ({alpha}) and lr ({values['lr']}) are the same step: give one of them")
            values = {**values, "lr": alpha}
        return values

    @model_validator(mode="after")
    def _frame_fits(self):
        if self.frame_size is not None:
            if self.frame_size > self.image_size:
                raise ValueError(f"frame_size ({self.frame_size}) must be <= image_size ({self.image_size})")
            if self.frame_size < self.sample_diameter + 2:
                raise ValueError(f"frame_size ({self.frame_size}) must be >= sample_diameter + 2 "
                                 f"({self.sample_diameter + 2}) so that the pupil fits in a frame")
        return self
