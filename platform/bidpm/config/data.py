"""Dataset and sharding settings (``data:`` section); the pipeline lives in ``bidpm.data``."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from .base import ConfigError, Section
from .salt import DEFAULT_SALT, SALT_ENV, check_salt_strength, read_salt_file, salt_fingerprint
from .split import SplitConfig

# Modality names each layout knows (file stems). ``csv`` and ``phantom`` add their own below.
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
SYNTHRAD_MODALITIES = ("mr", "ct")
DEFAULT_MODALITIES = {"brats": ("t1", "t2"), "synthrad": ("mr", "ct"), "csv": ("source", "target")}


class PhantomConfig(Section):
    """Generated paired volumes (demos, tests, benchmarks): see ``bidpm.data.phantom``."""

    num_subjects: int = Field(12, ge=1)
    shape: list[int] = Field(default_factory=lambda: [48, 48, 24], description="voxels (x, y, z) in RAS")
    seed: int = 0
    layout: Literal["brats", "synthrad"] = "brats"
    region: Literal["brain", "pelvis"] = "brain"

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or any(s < 8 for s in v):
            raise ValueError("must be [X, Y, Z] with every side >= 8, e.g. [40, 40, 16]")
        return v


class DataConfig(Section):
    """Where volumes come from, how slices are made, and where shards go.

    ``pairing_ratio`` is applied when shards are *read*, by ``pairing_unit``: ``subject`` (default) pairs
    the first ceil(ratio * n) training subjects of a stable hash order, and each other subject gives its
    source or its target slices, never both; ``slice`` pairs a row iff a stable hash of (subject, slice,
    pairing_seed) falls below the ratio. Either way 1%, 10%, 50%, 100% share one set of shards and the
    paired sets are nested (``bidpm.data.pairing``).
    ``source_modality`` / ``target_modality`` unset take the layout's default (brats t1->t2,
    synthrad mr->ct, csv source->target; phantom: that of ``phantom.layout``).
    """

    layout: Literal["phantom", "brats", "synthrad", "csv"] = "phantom"
    root: Optional[str] = Field(
        None,
        description="input folder (brats: holds BraTS2021_*/; synthrad: the Task1 folder holding brain/ and pelvis/), "
        "CSV file (csv), or where phantoms are written (phantom; default <output_dir>/phantoms)",
    )
    shards_dir: str = Field("shards", description="relative paths resolve under output_dir; URIs (s3://, gs://) kept as is")
    source_modality: Optional[str] = None
    target_modality: Optional[str] = None
    region: Literal["brain", "pelvis"] = "brain"
    image_size: list[int] = Field(default_factory=lambda: [32, 32], description="[H, W] of every slice")
    slice_mode: Literal["central", "mask"] = "central"
    num_slices: int = Field(8, ge=1, description="central K slices per volume (paper: 100 brain, 50 pelvis)")
    mr_percentiles: list[float] = Field(default_factory=lambda: [0.5, 99.5], description="inside the mask, -> [-1, 1]")
    ct_window: list[float] = Field(default_factory=lambda: [-1024.0, 3000.0], description="HU clipped then -> [-1, 1]")
    ct_modalities: list[str] = Field(default_factory=lambda: ["ct"], description="modality names normalised by ct_window")
    geometry_atol: float = Field(1e-3, gt=0.0, description="max |affine difference| (mm) between a pair's volumes")
    split: SplitConfig = Field(default_factory=SplitConfig)
    pairing_ratio: float = Field(1.0, gt=0.0, le=1.0)
    pairing_seed: int = 0
    pairing_unit: Literal["subject", "slice"] = Field(
        "subject", description="what is paired: whole subjects (a patient has both modalities or one; unpaired "
        "subjects give their source or their target slices, never both) or single slices (the behaviour before "
        "this field: slices of one subject on both sides, for reproducing slice-level numbers)")
    train_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="share of the training SUBJECTS a run reads (data-scaling curves): the "
        "ceil(f * n) subjects first in a stable hash order of data.pairing_seed, so smaller fractions are nested "
        "subsets of larger ones; applied at read time, one set of shards serves every fraction")
    pseudonymise: bool = True
    pseudonym_salt: Optional[str] = Field(
        None, exclude=True, repr=False,
        description=f"secret: with it, ids can be re-derived. Set ${SALT_ENV} (never in YAML); unset = "
                    f"{DEFAULT_SALT!r}. Excluded from every dump (params, configs, checkpoints, models)")
    pseudonym_salt_file: Optional[str] = Field(
        None, description=f"a file holding the salt (first line; readable by you only): the path is not secret, "
                          f"the salt never appears in a command line, the dashboard or a RayJob. Wins over ${SALT_ENV}")
    salt_digest: Optional[str] = Field(None, description="derived (do not set): salt_fingerprint of the salt")
    skip_bad: bool = False
    allow_outside_root: bool = Field(
        False, description="csv layout: allow rows naming files outside the CSV's folder (absolute paths, '..'); "
                           "off, such a row is that subject's outside_root problem")
    row_group_rows: int = Field(64, ge=1, description="Parquet row-group size (rows) - the unit readers stream")
    num_workers: Optional[int] = Field(
        None, ge=1,
        description="concurrent ingest tasks; unset = as many as the cluster's CPUs allow (faster: with a cap, Ray Data's "
                    "driver hands out each next task only after reaping a finished one, measured 0.1-1.4 s idle per task "
                    "on a busy 2-core driver; unset, every task is queued in Ray at once)")
    cpus_per_task: float = Field(1.0, gt=0.0)
    max_volume_bytes: int = Field(2 * 1024**3, ge=1024**2, description="largest volume a file may be, inflate to or "
                                  "declare, checked before allocation (bidpm.io.nifti_guard); 2 GiB fits a 512x512x1024 CT")
    task_memory_bytes: int = Field(1024**3, ge=0, description="memory Ray reserves per ingest task (one pair at a time); "
                                   "1 GiB holds a BraTS/SynthRAD pair, raise it for large CT (0 = no reservation)")
    task_retries: int = Field(2, ge=0, description="retries of an ingest task whose process died (OOM, lost node; Ray "
                              "Data's default: forever); then its subjects are read one per task and a dying one is its error")
    subjects_per_task: Optional[int] = Field(
        None, ge=1, description="volume pairs one ingest task processes in turn (memory: still one pair at a time); "
        "unset = enough for about 4 tasks per worker, which amortises Ray Data's per-task cost")
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or any(s < 8 for s in v):
            raise ValueError("must be [H, W] with both sides >= 8, e.g. [32, 32] or [192, 192]")
        return v

    @field_validator("mr_percentiles")
    @classmethod
    def _pct(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not 0.0 <= v[0] < v[1] <= 100.0:
            raise ValueError("must be [low, high] percentiles with 0 <= low < high <= 100, e.g. [0.5, 99.5]")
        return v

    @field_validator("ct_window")
    @classmethod
    def _window(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not v[0] < v[1]:
            raise ValueError("must be [low, high] HU with low < high, e.g. [-1024, 3000]")
        return v

    @model_validator(mode="after")
    def _modalities(self) -> "DataConfig":
        src, tgt = self.modalities
        if src == tgt:
            raise ValueError(f"data.source_modality and data.target_modality are both {src!r}; pick two different modalities")
        layout = self.phantom.layout if self.layout == "phantom" else self.layout
        known = {"brats": BRATS_MODALITIES, "synthrad": SYNTHRAD_MODALITIES}.get(layout)
        if known is not None:
            for field, m in (("source_modality", src), ("target_modality", tgt)):
                if m not in known:
                    raise ValueError(f"data.{field}: {m!r} is not a {layout} modality; choose one of {list(known)}")
        return self

    @model_validator(mode="after")
    def _secrets(self) -> "DataConfig":
        # First load (no digest yet): the salt from the field, else $BIDPM_PSEUDONYM_SALT, else the
        # default. A config rebuilt from a dump carries only the digest and keeps it (workers and
        # trials read shards, they never need the salt itself).
        if self.pseudonym_salt is not None:
            object.__setattr__(self, "salt_digest", salt_fingerprint(self.pseudonym_salt))
        elif self.salt_digest is None:
            found = read_salt_file(self.pseudonym_salt_file) if self.pseudonym_salt_file else os.environ.get(SALT_ENV)
            object.__setattr__(self, "salt_digest", salt_fingerprint(found or DEFAULT_SALT))
        lists = self.split.explicit_lists()
        if lists is not None:
            salt = self.known_salt()
            if salt is None:
                raise ValueError(f"data.split.*_subjects: explicit subject lists need the pseudonym salt with digest "
                                 f"{self.salt_digest}; set ${SALT_ENV} (or data.pseudonym_salt=...)")
            text = json.dumps(lists, sort_keys=True)
            object.__setattr__(self.split, "subjects_digest", hashlib.sha256(f"{salt}|{text}".encode()).hexdigest()[:16])
        return self

    def __getstate__(self) -> dict:
        """Pickles (Ray object store, spilled objects, Tune state) carry no salt, like dumps; an
        in-process ``model_copy`` keeps it (the driver may still have to ingest)."""
        state = super().__getstate__()
        state["__dict__"] = {**state["__dict__"], "pseudonym_salt": None}
        return state

    def known_salt(self) -> Optional[str]:
        """The salt itself when this process has it (field, environment or the default, whichever
        matches ``salt_digest``), else None."""
        if self.pseudonym_salt is not None:
            return self.pseudonym_salt
        path = os.path.expanduser(self.pseudonym_salt_file or "")
        from_file = read_salt_file(path) if path and os.path.isfile(path) else None
        for candidate in (from_file, os.environ.get(SALT_ENV), DEFAULT_SALT):
            if candidate and salt_fingerprint(candidate) == self.salt_digest:
                return candidate
        return None

    def ingest_secrets(self) -> str:
        """The salt for a fresh ingest, after checking the subject lists are here too; a clear error when
        this config was rebuilt from a dump (which holds neither), or when real data (any layout but
        ``phantom``) would be pseudonymised with the public default or a salt under 128 bits."""
        salt = self.known_salt()
        if salt is None:
            raise ConfigError(f"data.pseudonym_salt: this config carries only the salt's digest ({self.salt_digest}); "
                              f"ingest needs the salt itself: set ${SALT_ENV} (or data.pseudonym_salt_file=...)")
        if self.layout != "phantom" and self.pseudonymise:
            check_salt_strength(salt, self.layout)
        if self.split.subjects_digest is not None and self.split.explicit_lists() is None:
            raise ConfigError("data.split: this config carries only the digest of explicit subject lists; ingest needs "
                              "the lists themselves: pass data.split.{train,val,test}_subjects as in the original config")
        return salt

    @property
    def modalities(self) -> tuple[str, str]:
        """(source, target) modality names with the layout defaults filled in."""
        layout = self.phantom.layout if self.layout == "phantom" else self.layout
        d_src, d_tgt = DEFAULT_MODALITIES[layout]
        return (self.source_modality or d_src, self.target_modality or d_tgt)

    @property
    def reader_layout(self) -> str:
        """The on-disk layout the readers parse (phantoms are written in a real layout)."""
        return self.phantom.layout if self.layout == "phantom" else self.layout

    @property
    def reader_region(self) -> str:
        return self.phantom.region if self.layout == "phantom" else self.region
