"""Slices put back into volumes and scored in 3-D (paper Table 5), plus SynthRAD2023's and 2025's CT metrics.

A subject's slices (in slice-index order) are stacked into a (Z, H, W) volume per direction, for the
synthesis and for the real images, and scored with ``metrics.clinical.volume_metrics`` on the same value
scale as the slices (``evaluation.scale``) inside the stacked slice mask, with the inter-slice consistency of
``metrics.consistency`` (sagittal / coronal SSIM, through-plane gradient error). When a direction produces CT,
``synthrad_metrics`` (2023: ``hu_*``) and ``synthrad2025_metrics`` (``hu25_*``: MAE, PSNR, masked 3-D
MS-SSIM) are also taken on the volume in Hounsfield units (the inverse of ``data.ct_window``).

Choices: the volume is what the shards hold - the selected slices (``data.num_slices`` central or
in-mask ones), resized to ``data.image_size`` - not the original grid, so HU figures are comparable
between our runs, and with the challenge's only up to that resampling. A volume with fewer than 7
slices (the 7x7x7 SSIM window) or an empty mask gets NaN and is counted in ``skipped``. Rows must
arrive subject by subject (``data.readers.iter_split`` reads one subject file after another); a
subject's buffer is scored as soon as the next subject starts, so memory holds about one volume.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from ..metrics.clinical import synthrad_metrics, volume_metrics
from ..metrics.consistency import inter_slice_consistency
from ..metrics.synthrad2025 import synthrad2025_metrics

VOLUME_METRICS = ("ssim", "psnr", "mae", "sag_ssim", "cor_ssim", "tp_grad_mae")   # + inter-slice consistency
HU_METRICS = ("mae", "psnr", "ssim")
HU25_METRICS = ("mae", "psnr", "ms_ssim")


class VolumeScorer:
    """Accumulates (subject, slice) rows of one grid and scores every finished subject's volume."""

    def __init__(self, data_range: float, hu_direction: Optional[str] = None,
                 ct_window: Sequence[float] = (-1024.0, 3000.0), scaled: tuple[float, float] = (0.5, 0.5)) -> None:
        self.data_range = data_range
        self.hu_direction = hu_direction            # "fwd" / "bwd": the direction whose output is CT
        self.ct_window = (float(ct_window[0]), float(ct_window[1]))
        self.scaled = scaled                        # (a, b) of the value scale, to get [-1, 1] back for HU
        self.rows: dict[str, list] = defaultdict(list)
        self.order: list[str] = []
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.subjects: list[str] = []
        self.skipped: dict[str, str] = {}

    def add(self, ids: Sequence[tuple[str, int]], images: dict[str, tuple[np.ndarray, np.ndarray]], mask: np.ndarray) -> None:
        """``images[d] = (pred, ref)``, (B, H, W) on the value scale, for d in fwd/bwd; ``mask`` (B, H, W)."""
        for i, (subject, k) in enumerate(ids):
            if subject not in self.rows:
                self.order.append(subject)
            self.rows[subject].append((k, {d: (p[i], r[i]) for d, (p, r) in images.items()}, mask[i]))
        last = ids[-1][0] if ids else None
        for subject in [s for s in self.order if s != last]:
            self._score(subject)

    def finish(self) -> None:
        for subject in list(self.order):
            self._score(subject)

    def _hu(self, x: np.ndarray) -> np.ndarray:
        a, b = self.scaled
        lo, hi = self.ct_window
        return ((x - b) / a + 1.0) / 2.0 * (hi - lo) + lo        # value scale -> [-1, 1] -> HU

    def _score(self, subject: str) -> None:
        rows = sorted(self.rows.pop(subject), key=lambda r: r[0])
        self.order.remove(subject)
        self.subjects.append(subject)
        mask = np.stack([r[2] for r in rows]).astype(np.float64)
        for d in rows[0][1]:
            pred = np.stack([r[1][d][0] for r in rows]).astype(np.float64)
            ref = np.stack([r[1][d][1] for r in rows]).astype(np.float64)
            try:
                vals = volume_metrics(pred, ref, self.data_range, mask)
                vals.update(inter_slice_consistency(pred, ref, self.data_range, mask))
                if d == self.hu_direction:
                    ct, sct = self._hu(ref), self._hu(pred)
                    vals.update({f"hu_{k}": v for k, v in synthrad_metrics(ct, sct, mask).items()})
                    vals.update({f"hu25_{k}": v for k, v in synthrad2025_metrics(ct, sct, mask).items()})
            except ValueError as exc:                  # < 7 slices, empty mask: NaN, said once per subject
                self.skipped[subject] = str(exc)
                vals = {m: float("nan") for m in VOLUME_METRICS}
                if d == self.hu_direction:
                    vals.update({f"hu_{m}": float("nan") for m in HU_METRICS})
                    vals.update({f"hu25_{m}": float("nan") for m in HU25_METRICS})
            for k, v in vals.items():
                self.values[d][k].append(v)

    def result(self) -> dict[str, dict[str, np.ndarray]]:
        return {d: {k: np.asarray(v, dtype=np.float64) for k, v in per.items()} for d, per in self.values.items()}
