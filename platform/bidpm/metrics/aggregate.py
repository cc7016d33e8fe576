"""Aggregating per-image metric values: mean/std summaries and a streaming accumulator.

Forward = source -> target synthesis (``fwd``), backward = target -> source (``bwd``), paper Algorithm 2.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["BACKWARD", "FORWARD", "MetricAccumulator", "direction_metrics", "summarise"]

FORWARD = "fwd"   # source -> target synthesis
BACKWARD = "bwd"  # target -> source synthesis

def summarise(values: Mapping[str, Tensor | Sequence[float] | np.ndarray]) -> dict[str, float]:
    """``{k: (B,)}`` -> ``{"<k>_mean", "<k>_std"}`` floats; NaN entries (empty masks) are skipped.

    The std is the population std (ddof=0), so one image gives 0 rather than NaN.
    """
    out: dict[str, float] = {}
    for k, v in values.items():
        a = torch.as_tensor(v).detach().double().flatten().cpu().numpy()
        a = a[~np.isnan(a)]
        out[f"{k}_mean"] = float(a.mean()) if a.size else float("nan")
        out[f"{k}_std"] = float(a.std()) if a.size else float("nan")
    return out


class MetricAccumulator:
    """Streaming mean/std over every image of a validation pass, batch by batch.

    Keeps (count, mean, M2) per key in float64 and combines batches with Chan et al.'s parallel
    update, so nothing grows with the dataset. ``merge`` combines accumulators (e.g. gathered from
    data-parallel workers); ``state_dict``/``from_state_dict`` make that a plain dict.

    >>> acc = MetricAccumulator()
    >>> acc.update(image_metrics(fake_t2, real_t2), prefix="fwd")
    >>> acc.compute()   # {"fwd/ssim_mean": ..., "fwd/ssim_std": ..., ...}
    """

    def __init__(self) -> None:
        self._stats: dict[str, tuple[int, float, float]] = {}

    def update(self, values: Mapping[str, Tensor | Sequence[float] | np.ndarray], prefix: str = "") -> None:
        """Add one batch of per-image values ``{k: (B,)}``; keys become ``prefix/k`` when prefix is set."""
        for k, v in values.items():
            a = torch.as_tensor(v).detach().double().flatten().cpu().numpy()
            a = a[~np.isnan(a)]
            if a.size:
                self._combine(f"{prefix}/{k}" if prefix else k, (int(a.size), float(a.mean()),
                                                               float(((a - a.mean()) ** 2).sum())))

    def _combine(self, key: str, other: tuple[int, float, float]) -> None:
        n_b, mean_b, m2_b = other
        n_a, mean_a, m2_a = self._stats.get(key, (0, 0.0, 0.0))
        n = n_a + n_b
        if n == 0:
            return
        delta = mean_b - mean_a
        self._stats[key] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n)

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Fold another accumulator's images into this one (in place); returns self."""
        for k, s in other._stats.items():
            self._combine(k, s)
        return self

    def count(self, key: str) -> int:
        """How many (non-NaN) images were added under ``key``."""
        return self._stats.get(key, (0, 0.0, 0.0))[0]

    def compute(self) -> dict[str, float]:
        """``{"<k>_mean", "<k>_std"}`` over all images added so far (population std)."""
        out: dict[str, float] = {}
        for k, (n, mean, m2) in sorted(self._stats.items()):
            out[f"{k}_mean"] = mean
            out[f"{k}_std"] = math.sqrt(max(m2, 0.0) / n)
        return out

    def state_dict(self) -> dict[str, list[float]]:
        return {k: [float(n), mean, m2] for k, (n, mean, m2) in self._stats.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Sequence[float]]) -> "MetricAccumulator":
        acc = cls()
        for k, (n, mean, m2) in state.items():
            acc._stats[k] = (int(n), float(mean), float(m2))
        return acc

    def reset(self) -> None:
        self._stats.clear()


def direction_metrics(per_direction: Mapping[str, Mapping[str, Tensor]], prefix: str = "") -> dict[str, float]:
    """``{"fwd": image_metrics(...), "bwd": ...}`` -> ``{"[prefix/]fwd/ssim_mean": ..., ...}`` floats.

    Forward = source -> target synthesis, backward = target -> source (Algorithm 2 of the paper).
    """
    out: dict[str, float] = {}
    for direction, values in per_direction.items():
        head = f"{prefix}/{direction}" if prefix else direction
        out.update({f"{head}/{k}": v for k, v in summarise(values).items()})
    return out
