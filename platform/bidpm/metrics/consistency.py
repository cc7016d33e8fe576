"""Inter-slice consistency of slice-wise synthesis: a volume synthesised one axial slice at a time can be
sharp in-plane and still flicker from slice to slice, which only the other planes show. numpy/scipy only.

For volumes (Z, H, W) stacked in slice order (``evaluation.volumes``):

- ``sag_ssim`` / ``cor_ssim``: SSIM of the reformatted sagittal planes (each x: a (Z, H) image) and coronal
  planes (each y: (Z, W)) of the synthesis against the real volume, as ``clinical``'s SSIM (7x7 uniform window,
  sample covariance, K1 = 0.01, K2 = 0.03, the given data range), averaged over the in-mask pixels of every
  plane after cropping the 3-pixel window border (pixels of all planes pooled, so planes weigh by their mask).
- ``tp_grad_mae``: through-plane gradient error, mean |d_z pred - d_z ref| over neighbouring slice pairs whose
  two voxels are both in the mask (d_z = the difference to the next slice), on the value scale of the volumes.
"""

from __future__ import annotations

import numpy as np

from .clinical import _PAD, _check_range, _ssim_map, _volume

__all__ = ["inter_slice_consistency"]


def inter_slice_consistency(pred: np.ndarray, ref: np.ndarray, data_range: float, mask: np.ndarray) -> dict[str, float]:
    """{"sag_ssim", "cor_ssim", "tp_grad_mae"} of one synthesised volume (Z, H, W) against the real one."""
    fn = "inter_slice_consistency"
    p = _volume(fn, "pred", pred)
    r = _volume(fn, "ref", ref, p.shape)
    inside = _volume(fn, "mask", mask, p.shape) > 0
    rng = _check_range(fn, "data_range", data_range)
    out = {"sag_ssim": _plane_ssim(p, r, inside, rng, axis=2), "cor_ssim": _plane_ssim(p, r, inside, rng, axis=1)}
    both = inside[1:] & inside[:-1]
    if not both.any():
        raise ValueError(f"{fn}: no two neighbouring slices share a mask voxel; pass the body mask of this volume")
    out["tp_grad_mae"] = float(np.abs(np.diff(p, axis=0) - np.diff(r, axis=0))[both].mean(dtype=np.float64))
    return out


def _plane_ssim(p: np.ndarray, r: np.ndarray, inside: np.ndarray, rng: float, axis: int) -> float:
    """In-mask SSIM pooled over the planes perpendicular to ``axis`` (2 = sagittal, 1 = coronal)."""
    crop = (slice(_PAD, -_PAD),) * 2
    values = []
    for k in range(p.shape[axis]):
        m = np.take(inside, k, axis=axis)[crop]
        if m.any():
            values.append(_ssim_map(np.take(p, k, axis=axis), np.take(r, k, axis=axis), rng)[crop][m])
    if not values:
        raise ValueError("inter_slice_consistency: the mask has no voxel inside the SSIM border of any plane")
    return float(np.concatenate(values).mean(dtype=np.float64))
