"""Training objective settings (``method:`` section): Bi-DPM (paper Eq. 5-9) or a baseline."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..timegrid import check_grid
from .base import Section

MethodName = Literal["bidpm", "rf", "icfm", "otcfm", "vpcfm", "cyclegan", "shortcut", "meanflow"]
STEP_METHODS = ("shortcut", "meanflow")    # their field takes a second scalar, the signed step h: u(x, t, h)
PairedDistance = Literal["lpips", "l2", "l1", "pseudo_huber"]
MMDKernel = Literal["rbf", "imq", "laplacian"]


def paper_step_weights(n_steps: int) -> list[float]:
    """Paper 3.2: w = 1 at t = 0 and t = 1, w = 0.5 at every interior time point."""
    return [1.0] + [0.5] * (n_steps - 1) + [1.0]


class MethodConfig(Section):
    """Which objective trains u_theta and how it synthesises.

    ``time_grid`` is 0 = t_0 < ... < t_N = 1 (Bi-DPM's matching points and its synthesis grid).
    ``step_weights`` are w_0..w_N of Eq. 6; left empty they resolve to the paper's choice.
    Baselines (rf, icfm, otcfm, vpcfm) train on continuous t and synthesise on ``time_grid`` too,
    so a step-count sweep compares every method on the same grid.
    """

    name: MethodName = "bidpm"
    time_grid: list[float] = Field(default_factory=lambda: [0.0, 1.0])
    step_weights: Optional[list[float]] = None
    paired_distance: PairedDistance = "lpips"
    lpips_net: Literal["vgg", "alex", "squeeze"] = "vgg"
    lpips_backbone_weights: Optional[str] = Field(
        None, description="path to the torchvision backbone state_dict; default: the torch hub cache under TORCH_HOME"
    )
    lpips_random_backbone: bool = Field(
        False, description="TESTS ONLY: random (untrained) backbone, lpips.LPIPS(pnet_rand=True); not a perceptual metric"
    )
    pseudo_huber_c: float = Field(0.03, gt=0.0)
    lambda_unpaired: float = Field(0.0, ge=0.0)
    mmd_kernel: MMDKernel = "rbf"
    mmd_bandwidth: Literal["median", "fixed"] = "median"
    mmd_bandwidth_scale: float = Field(1.0, gt=0.0, description="multiplies the median heuristic, or IS the bandwidth when fixed")
    mmd_bandwidth_multipliers: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    mmd_estimator: Literal["biased", "unbiased"] = "biased"
    cfm_sigma: float = Field(0.0, ge=0.0, description="I-CFM / OT-CFM path noise sigma")
    cycle_lambda: float = Field(10.0, ge=0.0, description="CycleGAN: weight of the cycle-consistency L1 terms (Zhu et al.: 10)")
    identity_lambda: float = Field(0.5, ge=0.0, description="CycleGAN: identity L1 weight as a share of cycle_lambda (Zhu et al.: 0.5)")
    shortcut_levels: int = Field(7, ge=1, le=12, description="shortcut: step sizes d = 1/2^k, k = 0..levels (Frans et al.: 7, d >= 1/128)")
    shortcut_consistency_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="shortcut: share of each batch trained on self-consistency (Frans et al.: 1/4)")
    meanflow_distinct_fraction: float = Field(
        0.25, ge=0.0, le=1.0, description="MeanFlow: share of rows with r != t (Geng et al.: 25%); the rest are r = t (flow matching)")
    meanflow_adaptive_p: float = Field(
        1.0, ge=0.0, description="MeanFlow: adaptive loss weight 1/(err + 1e-3)^p (Geng et al.: p = 1); 0 = plain squared error")

    @property
    def n_steps(self) -> int:
        return len(self.time_grid) - 1

    @field_validator("time_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        return check_grid(v, "method.time_grid")

    @field_validator("mmd_bandwidth_multipliers")
    @classmethod
    def _mult(cls, v: list[float]) -> list[float]:
        if not v or any(m <= 0 for m in v):
            raise ValueError("must be a non-empty list of positive numbers")
        return v

    @model_validator(mode="after")
    def _weights(self) -> "MethodConfig":
        if self.step_weights is None:
            object.__setattr__(self, "step_weights", paper_step_weights(self.n_steps))
        w = self.step_weights
        if len(w) != self.n_steps + 1:
            raise ValueError(
                f"method.step_weights: needs len(time_grid) = {self.n_steps + 1} entries (w_0..w_N), got {len(w)}"
            )
        if any(x < 0 for x in w) or not any(x > 0 for x in w):
            raise ValueError("method.step_weights: weights must be >= 0 and not all 0")
        return self
