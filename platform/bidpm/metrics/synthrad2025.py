"""SynthRAD2025's image metrics of one synthetic CT against its CT in HU, in the body mask: MAE, PSNR and
a masked 3-D MS-SSIM, as the challenge's evaluation code computes them (``image_metrics.py``, class
``ImageMetrics``, in github.com/SynthRAD2025/evaluation). numpy and scipy only.

The recipe, with the code's quirks named (each one moves the numbers, so each is kept):

- Population range ``HU_RANGE = (-1024, 3071)`` (2023 used 3000); the mask is ``mask > 0``.
- MAE: mean |ct - sct| over mask voxels, on the *unclipped* values (the range is not applied to MAE).
- PSNR: both volumes clipped to the range, MSE over mask voxels, peak 4095 (capped at 100 dB, as in
  ``clinical``, where identical volumes would give +inf).
- MS-SSIM, five levels, weights ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``:
  1. clip to the range, set voxels outside the mask to -1024, shift by +1024 (non-negative values);
  2. edge-pad every axis to at least 97 voxels (split as floor/ceil of the shortfall; the mask too);
  3. at each level an SSIM map with a 7^3 uniform window (``uniform_filter``, mode reflect), sample
     covariance (343/342), K1 = 0.01, K2 = 0.03, data range 4095, as luminance L, contrast C and
     structure S, each clipped at 0, with C = (2 sx sy + C2) / (vx + vy + C2), S = (vxy + C3) / (sx sy + C3),
     C3 = C2 / 2, where sx = sqrt(max(vx, 0));
     the level's map is L^a * C^b * S^b with b = that level's weight and - **quirk** - a = the same weight
     at every level: the code builds the luminance-only-at-the-coarsest weights only when no weights are
     passed, after it has already filled in the defaults, so that branch never applies;
  4. the level's value = mean of the map over mask voxels after cropping 3 voxels from every side;
  5. downsample images by ``fftconvolve(x, ones(2,2,2)/8, mode="same")`` then every 2nd voxel -
     **quirk**: "same" with an even kernel averages voxel 2k with 2k-1, so the first plane of each
     axis is averaged with zeros; the mask is subsampled without filtering;
  6. MS-SSIM = product over levels of the level values clipped to [0, 1] (no further exponents).
- A level whose cropped mask holds no voxel raises ``ValueError`` (the official code returns NaN).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

from .clinical import _masked_mean, _psnr, _volume

__all__ = ["HU_RANGE", "MIN_SIZE", "SCALE_WEIGHTS", "masked_ms_ssim", "synthrad2025_metrics"]

HU_RANGE = (-1024.0, 3071.0)
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MIN_SIZE = 97          # every axis padded to this, so five levels of halving keep a 7-voxel window
WIN, K1, K2, CROP = 7, 0.01, 0.03, 3
FN = "synthrad2025_metrics"


def synthrad2025_metrics(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """{"mae", "psnr", "ms_ssim"} of one synthetic CT (module docstring); arrays of one shape, any axis order."""
    ct = _volume(FN, "ct_hu", ct_hu)
    sct = _volume(FN, "sct_hu", sct_hu, ct.shape)
    inside = _volume(FN, "mask", mask, ct.shape) > 0
    if not inside.any():
        raise ValueError(f"{FN}: mask has no voxel > 0; pass the body mask of this volume")
    lo, hi = HU_RANGE
    mae = _masked_mean(np.abs(ct - sct), inside)
    ct_c, sct_c = np.clip(ct, lo, hi), np.clip(sct, lo, hi)
    psnr = _psnr(_masked_mean((ct_c - sct_c) ** 2, inside), hi - lo)
    return {"mae": mae, "psnr": psnr, "ms_ssim": masked_ms_ssim(ct_c, sct_c, inside)}


def masked_ms_ssim(ct: np.ndarray, sct: np.ndarray, inside: np.ndarray,
                   weights: tuple[float, ...] = SCALE_WEIGHTS) -> float:
    """Steps 1-6 of the module docstring on clipped volumes and a boolean mask."""
    from scipy.signal import fftconvolve    # here: scipy.signal costs 0.5 s to import in every training worker

    lo, hi = HU_RANGE
    x, y = (np.where(inside, v, lo) - lo for v in (ct, sct))
    m = inside.astype(np.float64)
    pad = [(max(MIN_SIZE - n, 0) // 2, max(MIN_SIZE - n, 0) - max(MIN_SIZE - n, 0) // 2) for n in x.shape]
    x, y, m = (np.pad(v, pad, mode="edge") for v in (x, y, m))
    box = np.ones((2, 2, 2)) / 8.0
    value = 1.0
    for level, w in enumerate(weights):
        keep = m[(slice(CROP, -CROP),) * 3].astype(bool)
        if not keep.any():
            raise ValueError(f"{FN}: the mask has no voxel at MS-SSIM level {level + 1} of {len(weights)} "
                             f"(volume {x.shape} after {level} halvings, {CROP}-voxel crop); the body is too small")
        level_map = _ssim_lcs(x, y, hi - lo, w, w)[(slice(CROP, -CROP),) * 3]
        value *= float(np.clip(level_map[keep].mean(dtype=np.float64), 0.0, 1.0))
        x, y = (fftconvolve(v, box, mode="same")[::2, ::2, ::2] for v in (x, y))
        m = m[::2, ::2, ::2]
    return value


def _ssim_lcs(x: np.ndarray, y: np.ndarray, data_range: float, lum: float, cs: float) -> np.ndarray:
    """L^lum * C^cs * S^cs (step 3), full size."""
    cov = WIN ** 3 / (WIN ** 3 - 1.0)
    ux, uy = uniform_filter(x, WIN), uniform_filter(y, WIN)
    vx = cov * (uniform_filter(x * x, WIN) - ux * ux)
    vy = cov * (uniform_filter(y * y, WIN) - uy * uy)
    vxy = cov * (uniform_filter(x * y, WIN) - ux * uy)
    sx, sy = np.sqrt(np.clip(vx, 0, None)), np.sqrt(np.clip(vy, 0, None))
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    c3 = c2 / 2
    lum_t = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
    con_t = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
    str_t = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
    return lum_t ** lum * con_t ** cs * str_t ** cs
