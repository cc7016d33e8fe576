"""The value scale every reported SSIM/PSNR/MAE uses (``evaluation.scale``), named once.

SSIM's luminance term is not shift-invariant, so numbers compare only under one convention. ``unit``
(default): images mapped from the training scale [-1, 1] by x -> (x + 1) / 2, data range 1 (the common
convention of published tables). ``native``: [-1, 1] unchanged, data range 2. ``scale_note`` is the line
every table, report and MLflow run carries.
"""

from __future__ import annotations

from torch import Tensor

SCALES = {"unit": (0.5, 0.5, 1.0), "native": (1.0, 0.0, 2.0)}  # x' = a x + b, data range of x'


def to_scale(x: Tensor, scale: str) -> tuple[Tensor, float]:
    """[-1, 1] images -> the reporting scale; returns (images, data range)."""
    if scale not in SCALES:
        raise ValueError(f"evaluation.scale: {scale!r}; use 'unit' ([0, 1], data range 1) or 'native' ([-1, 1], range 2)")
    a, b, rng = SCALES[scale]
    return (x * a + b if (a, b) != (1.0, 0.0) else x), rng


def scale_note(scale: str) -> str:
    """One line naming the value convention, for tables, reports and MLflow run tags."""
    if scale == "unit":
        return "SSIM/PSNR/MAE inside the mask on images mapped to [0, 1], data range 1 (evaluation.scale=unit)"
    return "SSIM/PSNR/MAE inside the mask on the training scale [-1, 1], data range 2 (evaluation.scale=native)"


