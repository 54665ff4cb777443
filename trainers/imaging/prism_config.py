"""Config of the `prism` engine (progressive deep-decoder reconstruction); pydantic, no torch.

One iteration adds ONE aperture and refits the decoder to every aperture measured so far, so
`n_samples` is small by default: `python run.py --algorithm prism` must finish in minutes on
2 CPU cores. Iterations after the last sample retry the samples that failed (one each).

The shared keys keep their meaning: `lr` is Adam's step, `patience` stops the run after that
many samples without a val_loss gain (0 = use every sample), `schedule` is the per-sample inner
learning-rate schedule (the spec's `create_scheduler`; restarted at each sample).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from trainers.imaging.config import ImagingConfig

LossName = Literal["l1", "l2", "ssim"]


class PrismConfig(ImagingConfig):
    metric: str = Field("val_loss", description="relative L1 error of the held-out apertures' intensities (mode min)")
    validation_fraction: float = Field(0.1, ge=0, le=0.5,
                                       description="share of the apertures held out (never fitted) for val_loss; "
                                                   "0 = none (val_loss is then the fitted apertures' residual)")
    # a small step: the fits refine the estimate the initialisation gives (init_target=mopie); at
    # 1e-3 Adam's per-parameter steps moved the object where the data do not pin it (a fit to the
    # DC aperture alone took seed 3 from SSIM 0.96 to 0.66) and it never came back
    lr: float = Field(2e-4, gt=0, le=1, description="Adam learning rate of the decoder's fits (restored at each sample)")
    patience: int = Field(0, ge=0, le=10_000,
                          description="samples without a val_loss gain before stopping; 0 = use every sample")
    max_iterations: int = Field(1000, ge=1, le=1_000_000,
                                description="cap on iterations (= samples, then one per retried sample)")
    # problem size: small enough for a CPU run of a few minutes
    # 36 apertures of 51 px: the union reaches the grid's edge without gaps (band-limited ceiling
    # SSIM 0.980; 24 of 41 px left gaps, ceiling 0.863), so the decoder cannot put unmeasured
    # high frequencies into the object
    n_samples: int = Field(36, ge=1, le=1_000_000, description="number of sub-apertures (one per iteration)")
    sample_diameter: float = Field(51.0, gt=0, le=8192, description="sub-aperture diameter in px")
    # the per-sample fit and its convergence monitor
    loss: LossName = Field("l1", description="relative L1 / L2 of intensities (error / error of zeros), "
                                             "or 1 - SSIM of the normalised frames")
    aperture_weights: Literal["energy", "equal"] = Field(
        "energy", description="energy: the loss sums every frame's error over all frames' (bright central "
                              "apertures dominate); equal: the mean of each aperture's relative error")
    steps_per_sample: int = Field(60, ge=1, le=100_000, description="optimiser steps of one cycle")
    max_cycles: int = Field(2, ge=1, le=100, description="budget = steps_per_sample x max_cycles per sample")
    loss_threshold: float = Field(2e-3, gt=0, le=1, description="a sample has converged below this loss")
    check_every: int = Field(10, ge=1, le=100_000,
                             description="steps between convergence checks (the only host syncs of the loop)")
    converge_checks: int = Field(2, ge=1, le=1000,
                                 description="consecutive checks under loss_threshold before an early exit")
    plateau_checks: int = Field(3, ge=1, le=1000, description="window (in checks) of the plateau detector")
    plateau_tol: float = Field(0.01, ge=0, lt=1,
                               description="relative improvement over the window below which the loss has plateaued")
    escalation: Literal["lr_boost", "warm_restarts", "none"] = Field(
        "lr_boost", description="once per sample, on a plateau or after the first cycle: lr x escalation_factor "
                                "(warm_restarts: and cosine warm restarts from there)")
    escalation_factor: float = Field(2.0, ge=1, le=100, description="lr multiplier of the escalation")
    # restarts chosen by the validation error
    restarts: int = Field(1, ge=1, le=16, description="decoders tried from fresh seeds at the start; the one with the "
                                                      "lowest val_loss after restart_samples samples goes on")
    restart_samples: int = Field(6, ge=1, le=100_000, description="samples each restart is fitted to before choosing")
    # retry of failed samples at the end
    retry: bool = Field(True, description="refit failed samples after the last one, one per iteration")
    retry_lr_factor: float = Field(0.5, gt=0, le=1, description="lr multiplier of a retry")
    retry_loss: Optional[LossName] = Field(None, description="loss of a retry; None = l2 after l1, else l1")
    retry_share: float = Field(0.25, gt=0, lt=1, description="share of a retry's loss given to the failed aperture")
    # initialisation phase
    init_target: Literal["circle", "measurement", "synthetic_aperture", "mopie"] = Field(
        "mopie", description="circle: disc of obj_size; measurement: sqrt of the first image; "
                                   "synthetic_aperture: sqrt of the mean of the fitted images; mopie: the amplitude "
                                   "of a mopie (batched ePIE) reconstruction from the fitted apertures, "
                                   "init_epochs epochs; circle and synthetic_aperture are scaled to the power of "
                                   "the first image")
    init_epochs: int = Field(10, ge=1, le=10_000, description="mopie epochs of init_target=mopie")
    init_lr: Optional[float] = Field(1e-3, gt=0, le=1, description="Adam step of the initialisation fit; None = lr")
    init_steps: int = Field(400, ge=0, le=100_000, description="step budget of the initialisation fit (0 = skip)")
    init_threshold: float = Field(0.005, gt=0, le=1, description="relative L1 that ends the initialisation early")
    # the decoder
    decoder_width: int = Field(32, ge=2, le=1024, description="channels of the latent and the upsampling blocks")
    decoder_depth: int = Field(2, ge=1, le=8, description="3x3 convolutions that bring the channels down to 1")
    output_activation: Literal["sigmoid", "none"] = Field("sigmoid", description="activation of the amplitude")
    # measured on an H200 at 512: bf16 5.4 ms per step against 4.9 in float32 (cuDNN converts every
    # bf16 activation to NHWC and back: the decoder is too small for bf16 to pay for that)
    mixed_precision: bool = Field(False, description="bf16 autocast of the decoder on CUDA (ignored on CPU)")
    # measured on an H200 at 512: 1.4 ms per step against 5.3-6.7 eager and 3.2 with compile
    cuda_graphs: bool = Field(True, description="on one GPU, replay each fit's forward + loss + backward as one CUDA "
                                                "graph (ignored on a CPU, on several ranks and with compile)")
    compile: bool = Field(False, description="torch.compile the decoder with CUDA graphs (mode reduce-overhead; the "
                                             "first steps compile; measured on a GPU: 3.2 ms per step against 5.3 eager)")

    @model_validator(mode="after")
    def _checks_fit_the_budget(self):
        if self.check_every > self.steps_per_sample:
            raise ValueError(f"check_every ({self.check_every}) must be <= steps_per_sample "
                             f"({self.steps_per_sample}), or no check ever runs in a cycle")
        return self

    def retry_loss_name(self) -> str:
        """A different loss for the retry (the spec: lower lr AND a different loss)."""
        if self.retry_loss is not None:
            return self.retry_loss
        return "l2" if self.loss == "l1" else "l1"
