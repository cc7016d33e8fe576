"""Volume metrics on numpy arrays: SynthRAD2023's official MAE/PSNR/SSIM on CT in HU, and per-volume 3-D
SSIM/PSNR/MAE (paper Table 5). numpy and scipy only, so evaluation scripts need no torch.

Choices (the definitions leave these open):

- SynthRAD2023 follows the challenge's evaluation code (``functions/image_metrics.py``, class
  ``ImageMetrics``, in github.com/SynthRAD2023/metrics), with its fixed population range
  ``hu_range = (-1024, 3000)``:
  MAE = mean |gt - pred| over voxels with ``mask > 0``, on the *unclipped* values (as the official code);
  PSNR: both volumes clipped to ``hu_range``, MSE over the mask voxels, peak ``hi - lo`` (4024);
  SSIM: both clipped to ``hu_range``, voxels outside the mask set to ``lo``, shifted by ``-lo`` when
  ``lo < 0`` (so values are non-negative), SSIM map with data range ``hi - lo``, then the map averaged
  over mask voxels after cropping 3 voxels on every side.
- SSIM map: as scikit-image's ``structural_similarity`` default on a 3-D array: 7x7x7 uniform window
  (``scipy.ndimage.uniform_filter``, mode "reflect"), K1 = 0.01, K2 = 0.03, sample (co)variances
  (N/(N-1) with N = 343). Computed in float64; the official pipeline casts the volumes to float32
  first, which moves SSIM/PSNR by ~1e-8 and MAE by ~1e-6 HU on test volumes. The window sees voxels
  outside the mask (after the fill, for SynthRAD).
- SSIM is symmetric and the map is invariant to permuting the axes (cubic window, per-axis filter,
  crop on every side), so nibabel's (x, y, z) and SimpleITK's (z, y, x) orders give the same value.
- PSNR of identical volumes would be +inf (the official code returns inf); it is capped at
  ``PSNR_MAX_DB`` (100 dB, as ``bidpm.metrics.image.PSNR_MAX_DB``) so means stay finite; real
  syntheses are far below the cap.
- Masks: ``mask > 0`` is inside (the official binarisation). A mask with no voxel inside the cropped
  volume raises ``ValueError`` rather than returning NaN: an empty body mask is a data error.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy.ndimage import uniform_filter

__all__ = ["synthrad_metrics", "volume_metrics"]

PSNR_MAX_DB = 100.0  # same cap as bidpm.metrics.image (not imported: that module needs torch)
SSIM_WIN = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_PAD = (SSIM_WIN - 1) // 2
SYNTHRAD_HU_RANGE = (-1024.0, 3000.0)


# --- input handling ----------------------------------------------------------------------------------
def _volume(fn: str, name: str, arr: np.ndarray, shape: Optional[tuple[int, ...]] = None) -> np.ndarray:
    """float64 copy of a finite 3-D volume; errors name the argument and how to fix it."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"{fn}: {name} must be one 3-D volume, got shape {arr.shape}; "
                         "squeeze channel/batch axes and pass one volume at a time")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{fn}: {name} shape {arr.shape} != {shape}; resample it onto the same voxel grid")
    if min(arr.shape) < SSIM_WIN:
        raise ValueError(f"{fn}: {name} shape {arr.shape} has an axis shorter than {SSIM_WIN} voxels, "
                         f"the SSIM window; pad or pass a larger volume")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{fn}: {name} contains NaN or inf; fix the reader or replace them "
                         "(e.g. np.nan_to_num) before computing metrics")
    return arr


def _inside(fn: str, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean body mask (``mask > 0``), checked to be non-empty inside the SSIM crop."""
    inside = _volume(fn, "mask", mask, shape) > 0
    if not inside[_crop()].any():
        raise ValueError(f"{fn}: mask has no voxel > 0 once {_PAD} voxels are cropped from every side "
                         "(the SSIM border); pass the body mask of this volume, not an empty one")
    return inside


def _check_range(fn: str, name: str, value: float) -> float:
    """data_range as a float; SSIM constants and the PSNR peak depend on it, so it must be > 0."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: {name} must be a positive finite number (max - min of the value scale), "
                         f"got {value!r}")
    return float(value)


# --- shared pieces -----------------------------------------------------------------------------------
def _crop() -> tuple[slice, ...]:
    """Index that drops the (win-1)//2 = 3-voxel border on every side, as scikit-image's mean does."""
    return (slice(_PAD, -_PAD),) * 3


def _ssim_map(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """Full-size SSIM map, as scikit-image's default (uniform 7^3 window, sample covariance), float64."""
    n = SSIM_WIN ** x.ndim
    cov_norm = n / (n - 1.0)
    ux, uy = uniform_filter(x, size=SSIM_WIN), uniform_filter(y, size=SSIM_WIN)
    uxx = uniform_filter(x * x, size=SSIM_WIN)
    uyy = uniform_filter(y * y, size=SSIM_WIN)
    uxy = uniform_filter(x * y, size=SSIM_WIN)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))


def _masked_mean(values: np.ndarray, inside: Optional[np.ndarray]) -> float:
    return float(np.mean(values if inside is None else values[inside], dtype=np.float64))


def _psnr(mse: float, data_range: float) -> float:
    """10 log10(R^2 / MSE), capped at PSNR_MAX_DB so identical volumes give a finite value."""
    floor = data_range ** 2 * 10.0 ** (-PSNR_MAX_DB / 10.0)
    return float(10.0 * math.log10(data_range ** 2 / max(mse, floor)))


# --- public metrics ----------------------------------------------------------------------------------
def synthrad_metrics(gt_hu: np.ndarray, pred_hu: np.ndarray, mask: np.ndarray,
                     hu_range: tuple[float, float] = SYNTHRAD_HU_RANGE) -> dict[str, float]:
    """SynthRAD2023's official MAE (HU), PSNR (dB), SSIM of one synthetic CT against its CT, in the body mask.

    Kept separate from :func:`volume_metrics` because the challenge clips, fills and shifts before SSIM;
    numbers comparable with the leaderboard need exactly that recipe (see the module docstring).
    """
    fn = "synthrad_metrics"
    gt = _volume(fn, "gt_hu", gt_hu)
    pred = _volume(fn, "pred_hu", pred_hu, gt.shape)
    inside = _inside(fn, mask, gt.shape)
    lo, hi = (float(v) for v in hu_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{fn}: hu_range must be (low, high) with low < high, got {hu_range!r}; "
                         "the challenge uses (-1024, 3000)")
    data_range = hi - lo

    mae = _masked_mean(np.abs(gt - pred), inside)
    gt_c, pred_c = np.clip(gt, lo, hi), np.clip(pred, lo, hi)
    psnr = _psnr(_masked_mean((gt_c - pred_c) ** 2, inside), data_range)
    shift = -lo if lo < 0 else 0.0
    gt_s = np.where(inside, gt_c, lo) + shift
    pred_s = np.where(inside, pred_c, lo) + shift
    ssim = _masked_mean(_ssim_map(gt_s, pred_s, data_range)[_crop()], inside[_crop()])
    return {"mae": mae, "psnr": psnr, "ssim": ssim}


def volume_metrics(pred: np.ndarray, ref: np.ndarray, data_range: float,
                   mask: Optional[np.ndarray] = None) -> dict[str, float]:
    """3-D SSIM, PSNR (dB) and MAE of one reassembled volume against its reference (paper Table 5).

    Per volume rather than per slice, because slice-wise 2-D SSIM misses inconsistencies between
    neighbouring slices. With a mask, SSIM is the cropped map averaged over the cropped mask voxels
    and PSNR/MAE use the mask voxels; values are used as given (no clipping, no fill).
    """
    fn = "volume_metrics"
    r = _volume(fn, "ref", ref)
    p = _volume(fn, "pred", pred, r.shape)
    data_range = _check_range(fn, "data_range", data_range)
    inside = None if mask is None else _inside(fn, mask, r.shape)

    ssim = _masked_mean(_ssim_map(r, p, data_range)[_crop()], None if inside is None else inside[_crop()])
    psnr = _psnr(_masked_mean((p - r) ** 2, inside), data_range)
    mae = _masked_mean(np.abs(p - r), inside)
    return {"ssim": ssim, "psnr": psnr, "mae": mae}
