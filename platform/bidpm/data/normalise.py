"""Intensity normalisation to [-1, 1] and its inverse (paper 3.2: "normalized to the range [-1, 1]").

Both kinds are the same affine map after clipping, ``y = 2 (clip(x, low, high) - low) / (high - low) - 1``,
with parameters that differ by modality:
- CT: a fixed HU window (SynthRAD: [-1024, 3000]), so y maps back to HU for every subject alike;
- MR: per-volume percentiles computed inside the mask (MR has no absolute unit; percentiles are
  robust to bright outliers and to the amount of background).
The parameters are stored per volume in the manifest so synthetic slices can be mapped back.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bidpm.io.nifti import memory_order


def ct_params(window: Sequence[float]) -> dict:
    return {"kind": "ct_window", "low": float(window[0]), "high": float(window[1])}


def mr_params(volume: np.ndarray, mask: np.ndarray, percentiles: Sequence[float]) -> dict:
    """Percentiles of ``volume[mask > 0]``. Raises ValueError when they coincide (flat inside the mask)."""
    v, m = memory_order(volume, mask if mask.dtype == bool else mask > 0)
    inside = v.reshape(-1)[m.reshape(-1)]  # a fresh copy (reshape of a contiguous view is free): percentile may reorder it
    if inside.size == 0:
        raise ValueError("mask is empty")
    low, high = (float(v) for v in np.percentile(inside, list(percentiles), overwrite_input=True))
    if not high > low:
        raise ValueError(f"intensities inside the mask are constant between percentiles {list(percentiles)} (value {low})")
    return {"kind": "mr_percentile", "percentiles": [float(p) for p in percentiles], "low": low, "high": high}


def normalise(x: np.ndarray, params: dict) -> np.ndarray:
    """Original intensities (HU or MR units) -> float32 in [-1, 1]."""
    low, high = params["low"], params["high"]
    # One multiply-add and an in-place clip: the same map as clip-then-rescale (it is increasing),
    # with two float32 temporaries instead of five (ingest runs it on every kept slice).
    scale = 2.0 / (high - low)
    y = np.multiply(x, scale, dtype=np.float32, order="C")  # C order: what resize hands to torch, no second copy
    y -= np.float32(low * scale + 1.0)
    return np.clip(y, -1.0, 1.0, out=y)


def denormalise(y: np.ndarray, params: dict) -> np.ndarray:
    """[-1, 1] -> original units. Exact inverse of ``normalise`` inside [low, high]; values clipped there."""
    low, high = params["low"], params["high"]
    return ((np.clip(y, -1.0, 1.0) + 1.0) * 0.5 * (high - low) + low).astype(np.float32)


def denormalise_ct(y: np.ndarray, window: Sequence[float] = (-1024.0, 3000.0)) -> np.ndarray:
    """[-1, 1] -> Hounsfield units for a CT window."""
    return denormalise(y, ct_params(window))


def denormalise_mr(y: np.ndarray, low: float, high: float) -> np.ndarray:
    """[-1, 1] -> MR intensity given the volume's stored percentile values."""
    return denormalise(y, {"low": low, "high": high})
