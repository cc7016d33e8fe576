"""Put normalised slices back into a volume with the original geometry and intensity units.

The inverse of ingest for one volume: resize (K, H, W) back to (K, X, Y), denormalise with the
stored parameters, place the rows at their RAS slice indices (other slices hold the background value
``denormalise(-1)``), and reorient from RAS to the file's original axis codes.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from bidpm.io.nifti import from_ras

from .normalise import denormalise
from .slicing import resize_slices


def rebuild_volume(slices: np.ndarray, geometry: dict, role: str = "target", fill: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """slices: (K, H, W) in [-1, 1], rows ordered as ``geometry["slices"]``.

    Returns (volume in the original voxel order and units (float32), original affine 4x4), ready for
    ``bidpm.io.save_nifti``. ``role`` picks the normalisation ("source" or "target").
    """
    x, y, z = geometry["shape"]
    idx = np.asarray(geometry["slices"], dtype=int)
    if slices.shape[0] != len(idx):
        raise ValueError(f"got {slices.shape[0]} slices, geometry lists {len(idx)} slice indices")
    params = geometry["normalisation"][role]
    back = denormalise(resize_slices(slices, (x, y)), params)  # (K, X, Y)
    background = float(denormalise(np.array([-1.0]), params)[0]) if fill is None else fill
    vol = np.full((x, y, z), background, dtype=np.float32)
    vol[:, :, idx] = np.moveaxis(back, 0, 2)
    data, affine = from_ras(vol, np.asarray(geometry["affine"]), tuple(geometry["original_axcodes"]))
    return data.astype(np.float32), affine
