"""A study (``study:`` section): methods x pairing ratios x seeds [x training-set fractions], each cell
one Ray Tune trial running one Ray Train run, scored on the test split (``bidpm.study``)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from .base import SafeName, Section

StudyMethodName = Literal["bidpm", "rf", "icfm", "otcfm", "vpcfm", "cyclegan", "shortcut", "meanflow"]


class StudyMethod(Section):
    """One row of the study's tables: a method and what makes it that row.

    ``time_grid`` / ``step_weights``: Bi-DPM's training grid (the baselines train on continuous t, and
    CycleGAN is a one-step map). ``overrides``: any other dotted config keys for this row, e.g.
    ``{"method.lambda_unpaired": 0.3}`` or ``{"train.lr": 2e-4}``.
    """

    label: str = Field(..., min_length=1, description="row name in tables and figures, e.g. 'Bi-DPM N=1'")
    name: StudyMethodName
    time_grid: Optional[list[float]] = None
    step_weights: Optional[list[float]] = None
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        if "/" in v or v != v.strip():
            raise ValueError(f"must not contain '/' or surrounding spaces (got {v!r})")
        return v

    @model_validator(mode="after")
    def _grid(self) -> "StudyMethod":
        if self.name == "cyclegan" and self.time_grid not in (None, [0.0, 1.0]):
            raise ValueError(f"study.methods[{self.label}]: CycleGAN is a one-step map; leave time_grid unset")
        if self.name != "bidpm" and self.step_weights is not None:
            raise ValueError(f"study.methods[{self.label}]: step_weights are Bi-DPM's (Eq. 6); remove them for {self.name}")
        for key in self.overrides:
            if "." not in key or key.split(".")[0] not in ("model", "method", "train", "data"):
                raise ValueError(f"study.methods[{self.label}].overrides: {key!r} is not a model./method./train./data. key")
        return self


class StudyConfig(Section):
    """The grid and how its cells are run and compared.

    Per-cell resources: each cell is one Ray Train run (``train.num_workers`` x ``train.cpus_per_worker``
    / ``train.gpus_per_worker``) plus ``tune.trial_cpus`` for the trial itself; ``max_concurrent_trials``
    unset = as many cells as the cluster's CPUs and GPUs fit at once (at least 1).
    """

    name: SafeName = Field("study", description="study folder <train.storage_path>/<name>; a new name starts a new study")
    methods: list[StudyMethod] = Field(default_factory=list)
    pairing_ratios: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.1, 0.01])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    train_fractions: list[float] = Field(default_factory=lambda: [1.0], description="share of training subjects (nested)")
    train_subjects: Optional[list[int]] = Field(
        None, description="numbers of training subjects instead of shares (people think in patients): at the study's "
        "start each k becomes the fraction k / n of the shards' n training subjects, which reads exactly k; "
        "exclusive with train_fractions")
    baseline_nfe: list[int] = Field(default_factory=lambda: [1, 2, 5, 10], description="Euler steps the baselines are scored at (Fig. 7)")
    bidpm_extra_nfe: list[int] = Field(default_factory=list, description="Bi-DPM also at these uniform step counts (marked)")
    table2_ratio: Optional[float] = Field(None, description="pairing ratio of Table 2 (default: the smallest)")
    metric: Literal["ssim", "psnr", "mae"] = Field("ssim", description="the metric of Figures 5/7 and the significance test")
    bootstrap_samples: int = Field(2000, ge=100, description="paired bootstrap resamples of test images")
    scaling_resamples: int = Field(1000, ge=100, description="data-scaling fits: bootstrap resamples of test subjects "
                                   "and seeds (with >= 3 train_fractions; bidpm.scaling.fit)")
    ssim_targets: list[float] = Field(default_factory=lambda: [0.8, 0.9],
                                      description="the report's 'subjects needed for SSIM >= s' (from the scaling fit)")
    max_concurrent_trials: Optional[int] = Field(None, ge=1)
    volume_metrics: bool = Field(False, description="also score each test subject's slices stacked as a volume at the "
                                 "training grid: 3-D SSIM/PSNR/MAE, inter-slice consistency (sagittal/coronal SSIM, "
                                 "through-plane gradient error), SynthRAD HU metrics where a direction makes CT; a "
                                 "Volumes table per fraction")
    retry_failed: bool = Field(True, description="retry cells that failed (no scores) once per run, under the concurrency limit")
    fid: Optional[bool] = Field(
        None, description="FID of the forward syntheses per cell: null = when the Inception weights are in TORCH_HOME's hub "
        "cache (the report says when they were not), true = required (a study without them stops before training), false = never")

    @field_validator("pairing_ratios", "train_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < r <= 1.0 for r in v) or len(set(v)) != len(v):
            raise ValueError(f"must list distinct fractions in (0, 1], e.g. [1.0, 0.1] (got {v})")
        return sorted(v, reverse=True)

    @field_validator("train_subjects")
    @classmethod
    def _counts(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and (not v or any(k < 1 for k in v) or len(set(v)) != len(v)):
            raise ValueError(f"must list distinct subject counts >= 1, e.g. [4, 8, 16] (got {v})")
        return None if v is None else sorted(v, reverse=True)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must list distinct seeds, e.g. [0, 1, 2] (got {v})")
        return v

    @field_validator("baseline_nfe", "bidpm_extra_nfe")
    @classmethod
    def _nfe(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v) or len(set(v)) != len(v):
            raise ValueError(f"must list distinct step counts >= 1 (got {v})")
        return sorted(v)

    @model_validator(mode="after")
    def _cross(self) -> "StudyConfig":
        labels = [m.label for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"study.methods: labels must be unique (got {labels})")
        if self.train_subjects is not None and self.train_fractions != [1.0]:
            raise ValueError(f"study.train_subjects and study.train_fractions: set one of them (got counts "
                             f"{self.train_subjects} and fractions {self.train_fractions})")
        if self.table2_ratio is not None and self.table2_ratio not in self.pairing_ratios:
            raise ValueError(f"study.table2_ratio: {self.table2_ratio} is not one of study.pairing_ratios {self.pairing_ratios}")
        if not self.baseline_nfe and any(m.name not in ("bidpm", "cyclegan") for m in self.methods):
            raise ValueError("study.baseline_nfe: the baselines need at least one step count, e.g. [1, 2, 5, 10]")
        return self

    @property
    def cells(self) -> int:
        return len(self.methods) * len(self.pairing_ratios) * len(self.seeds) * len(self.train_subjects or self.train_fractions)
