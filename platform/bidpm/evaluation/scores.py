"""What a scoring pass returns: per-image values per grid and direction, and the one key schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from torch import Tensor

from ..config.metrics import METRICS, SHORT, summary_keys  # noqa: F401 - the one key schema, re-exported
from ..timegrid import check_grid, uniform_grid


@dataclass(frozen=True)
class GridSpec:
    """A time grid to score on; ``training_grid`` marks the model's own."""

    label: str
    grid: tuple[float, ...]
    training_grid: bool = False

    @property
    def steps(self) -> int:
        return len(self.grid) - 1


def grids_for(steps: Sequence[int], training_grid: Sequence[float]) -> list[GridSpec]:
    """Uniform grids for each N in ``steps`` plus the training grid (merged into its uniform twin when equal)."""
    train = tuple(check_grid(training_grid, "training grid"))
    specs, found = [], False
    for n in steps:
        g = tuple(uniform_grid(n))
        same = len(g) == len(train) and all(abs(a - b) < 1e-9 for a, b in zip(g, train))
        found = found or same
        specs.append(GridSpec(f"uniform N={n}" + (" (training grid)" if same else ""), g, same))
    if not found:
        specs.append(GridSpec(f"training grid {list(train)}", train, True))
    return specs


@dataclass
class GridScores:
    """Per-image values on one grid: ``values["fwd"]["ssim"]`` is an (N,) float64 array (NaN: empty mask)."""

    spec: GridSpec
    values: dict[str, dict[str, np.ndarray]]

    @property
    def metrics(self) -> list[str]:
        """``METRICS`` and the size-bound ones (``SIZED_METRICS``) these images were large enough for."""
        return [*METRICS, *(m for m in self.values["fwd"] if m not in METRICS)]

    def summary(self, prefix: str) -> dict[str, float]:
        """The key schema of the module docstring, NaN images skipped, population std."""
        out: dict[str, float] = {}
        metrics = self.metrics
        for d in SHORT.values():
            for m in metrics:
                v = self.values[d][m]
                v = v[~np.isnan(v)]
                out[f"{prefix}/{d}_{m}_mean"] = float(v.mean()) if v.size else float("nan")
                out[f"{prefix}/{d}_{m}_std"] = float(v.std()) if v.size else float("nan")
        for m in metrics:
            out[f"{prefix}/{m}_mean"] = 0.5 * (out[f"{prefix}/fwd_{m}_mean"] + out[f"{prefix}/bwd_{m}_mean"])
        out[f"{prefix}/images"] = float(len(self.values["fwd"]["ssim"]))
        return out


@dataclass
class Evaluation:
    """Scores of one model on one split, per grid, with the row ids and a few examples for a sample grid."""

    split: str
    scale: str
    grids: list[GridScores]
    ids: list[tuple[str, int]] = field(default_factory=list)
    examples: Optional[tuple[Tensor, Tensor, Tensor, Tensor]] = None  # source, fwd, target, bwd (first grid)
    volumes: Optional[dict[str, dict[str, np.ndarray]]] = None       # per-volume values (evaluation.volumes)
    volume_subjects: list[str] = field(default_factory=list)
    volumes_skipped: dict[str, str] = field(default_factory=dict)
    synthesis_ms_per_slice: Optional[float] = None   # network time per slice on the main grid (scorer.synthesis_ms)

    @property
    def main(self) -> GridScores:
        """The training grid's scores (or the only / first grid's)."""
        return next((g for g in self.grids if g.spec.training_grid), self.grids[0])

    def summary(self, grid: Optional[GridScores] = None) -> dict[str, float]:
        """The key schema for ``grid`` (default the main one), plus ``<split>/<d>_vol_<m>_mean`` / ``_std``
        (3-D per volume) and ``<split>/<d>_hu_<m>_mean`` (SynthRAD, HU) when volumes were scored."""
        out = (grid or self.main).summary(self.split)
        for d, per in (self.volumes or {}).items():
            for k, v in per.items():
                v = v[~np.isnan(v)]
                name = k if k.startswith(("hu_", "hu25_")) else f"vol_{k}"
                out[f"{self.split}/{d}_{name}_mean"] = float(v.mean()) if v.size else float("nan")
                out[f"{self.split}/{d}_{name}_std"] = float(v.std()) if v.size else float("nan")
        if self.volumes is not None:
            out[f"{self.split}/volumes"] = float(len(self.volume_subjects))
        return out
