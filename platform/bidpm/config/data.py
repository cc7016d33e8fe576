"""Dataset and sharding settings (``data:`` section)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from .base import Section


class PhantomConfig(Section):
    """Generated paired volumes (demos, tests, benchmarks): see ``bidpm.data.phantom``."""

    num_subjects: int = Field(12, ge=1)
    shape: list[int] = Field(default_factory=lambda: [48, 48, 24], description="voxels (x, y, z)")
    seed: int = 0
    layout: Literal["brats", "synthrad"] = "brats"
    region: Literal["brain", "pelvis"] = "brain"


class SplitConfig(Section):
    """Subject-level split: fractions by seed, or explicit subject lists (which win when given)."""

    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    train_subjects: Optional[list[str]] = None
    val_subjects: Optional[list[str]] = None
    test_subjects: Optional[list[str]] = None

    @model_validator(mode="after")
    def _sum(self) -> "SplitConfig":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.split: val_fraction + test_fraction must be < 1 (some subjects must train)")
        return self


class DataConfig(Section):
    """Where volumes come from, how slices are made, and where shards go.

    ``pairing_ratio`` is applied when shards are *read*: a row is paired iff a stable hash of
    (subject, slice, pairing_seed) falls below the ratio, so 1%, 10%, 50%, 100% share one set of shards
    and the paired sets are nested.
    """

    layout: Literal["phantom", "brats", "synthrad", "csv"] = "phantom"
    root: Optional[str] = Field(None, description="input folder (brats/synthrad), CSV file (csv), or where phantoms are written")
    shards_dir: str = Field("shards", description="relative paths resolve under output_dir; URIs (s3://, gs://) kept as is")
    source_modality: str = "t1"
    target_modality: str = "t2"
    region: Literal["brain", "pelvis"] = "brain"
    image_size: list[int] = Field(default_factory=lambda: [32, 32], description="[H, W] of every slice")
    slice_mode: Literal["central", "mask"] = "central"
    num_slices: int = Field(8, ge=1, description="central K slices per volume (paper: 100 brain, 50 pelvis)")
    mr_percentiles: list[float] = Field(default_factory=lambda: [0.5, 99.5])
    ct_window: list[float] = Field(default_factory=lambda: [-1024.0, 3000.0])
    split: SplitConfig = Field(default_factory=SplitConfig)
    pairing_ratio: float = Field(1.0, gt=0.0, le=1.0)
    pairing_seed: int = 0
    pseudonymise: bool = True
    pseudonym_salt: str = "bidpm"
    skip_bad: bool = False
    rows_per_file: int = Field(256, ge=1)
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or any(s < 8 for s in v):
            raise ValueError("must be [H, W] with both sides >= 8, e.g. [32, 32] or [192, 192]")
        return v

    @field_validator("mr_percentiles", "ct_window")
    @classmethod
    def _pair(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not v[0] < v[1]:
            raise ValueError("must be [low, high] with low < high")
        return v
