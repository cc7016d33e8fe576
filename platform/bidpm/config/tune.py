"""Ray Tune + Optuna settings (``tune:`` section) and the search space."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from .base import Section


class SearchSpaceConfig(Section):
    """What Optuna may vary (define-by-run; conditional on N and on the pairing ratio)."""

    n_steps: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], description="candidate N")
    grid_placement: Literal["uniform", "free", "warp"] = Field(
        "free", description="uniform: t_n = n/N; free: interior points sampled then sorted; warp: t_n = (n/N)^gamma"
    )
    warp_gamma: list[float] = Field(default_factory=lambda: [0.5, 2.0])
    end_weight: list[float] = Field(default_factory=lambda: [1.0, 1.0], description="[low, high] for w_0 = w_N")
    interior_weight: list[float] = Field(default_factory=lambda: [0.1, 1.0], description="[low, high] for w_1..w_{N-1}")
    lambda_unpaired: list[float] = Field(default_factory=lambda: [0.05, 1.0], description="log-uniform [low, high]")
    mmd_kernels: list[Literal["rbf", "imq", "laplacian"]] = Field(default_factory=lambda: ["rbf", "imq", "laplacian"])
    mmd_bandwidth_scale: list[float] = Field(default_factory=lambda: [0.5, 2.0])
    lr: Optional[list[float]] = None
    paired_distances: Optional[list[Literal["lpips", "l2", "l1", "pseudo_huber"]]] = None

    @model_validator(mode="after")
    def _ranges(self) -> "SearchSpaceConfig":
        if not self.n_steps or any(n < 1 for n in self.n_steps):
            raise ValueError("tune.space.n_steps: must list step counts >= 1, e.g. [1, 2]")
        for name in ("warp_gamma", "end_weight", "interior_weight", "lambda_unpaired", "mmd_bandwidth_scale", "lr"):
            r = getattr(self, name)
            if r is None:
                continue
            if len(r) != 2 or r[0] > r[1] or r[0] < 0:
                raise ValueError(f"tune.space.{name}: must be [low, high] with 0 <= low <= high (got {r})")
        for name in ("lambda_unpaired", "lr", "warp_gamma", "mmd_bandwidth_scale"):
            r = getattr(self, name)
            if r is not None and r[0] <= 0:
                raise ValueError(f"tune.space.{name}: sampled log-uniformly, so low must be > 0 (got {r})")
        if not self.mmd_kernels:
            raise ValueError("tune.space.mmd_kernels: list at least one of rbf, imq, laplacian")
        return self


class TuneConfig(Section):
    """Study size, scheduler and objective."""

    experiment_name: str = "bidpm-tune"
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(1, ge=1)
    metric: str = Field("val/ssim_mean", description="reported metric to optimise")
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    asha_grace_period: int = Field(1, ge=1)
    asha_reduction_factor: float = Field(2.0, gt=1.0)
    trial_cpus: float = Field(0.25, gt=0.0, description="CPU held by the trial driver itself (workers ask for their own)")
    space: SearchSpaceConfig = Field(default_factory=SearchSpaceConfig)
