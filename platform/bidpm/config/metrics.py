"""The metric-name schema every score follows (``bidpm.evaluation`` produces it, Tune and promotion
select by it): ``<split>/<fwd|bwd>_<metric>_<mean|std>``, ``<split>/<metric>_mean`` (both directions)
and ``<split>/images``. Pure Python, so a config validates its metric names without torch."""

from __future__ import annotations

import difflib
import re
from typing import Optional

METRICS = ("ssim", "psnr", "mae")
# Scored only where the images are large enough: MS-SSIM's five scales need 11 x 2^4 = 176 pixels per side
# (bidpm.metrics.ms_ssim.MS_SSIM_MIN_SIZE); its keys follow the schema below (``<split>/fwd_ms_ssim_mean``, ...).
SIZED_METRICS = {"ms_ssim": 176}
SHORT = {"forward": "fwd", "backward": "bwd"}   # direction -> the key's short name
TRAIN_KEYS = ("epoch", "step")     # plus anything under train/ (loss components differ per method)
SYNTHESIS_KEY = "val/synthesis_ms_per_slice"   # every epoch: synthesis time per slice on the training grid, its device
NFE_KEY = "nfe"                    # every search trial: its Euler steps (a cost objective, search.report)

__all__ = ["METRICS", "NFE_KEY", "SHORT", "SIZED_METRICS", "SYNTHESIS_KEY", "TRAIN_KEYS", "metric_problem", "metrics_for",
           "summary_keys"]


def metrics_for(image_size: Optional[tuple[int, int]] = None) -> tuple[str, ...]:
    """The image metrics scored on images of ``image_size`` (H, W): ``METRICS`` plus each of
    ``SIZED_METRICS`` the images are large enough for (None: ``METRICS`` only)."""
    if image_size is None:
        return METRICS
    return METRICS + tuple(m for m, need in SIZED_METRICS.items() if min(image_size) >= need)


def summary_keys(split: str, image_size: Optional[tuple[int, int]] = None) -> list[str]:
    """Every key a scored grid produces for ``split`` (``GridScores.summary``) on images of ``image_size``."""
    ms = metrics_for(image_size)
    return ([f"{split}/{d}_{m}_{s}" for d in SHORT.values() for m in ms for s in ("mean", "std")]
            + [f"{split}/{m}_mean" for m in ms] + [f"{split}/images"])


def metric_problem(name: str, split: str, image_size: Optional[tuple[int, int]] = None) -> Optional[str]:
    """Why no result will carry metric ``name`` (None when one will). ``split``: "val" for what trials and
    checkpoints are ranked by, "test" for promotion; ``image_size``: the data's (H, W), which decides
    whether the size-bound metrics are scored. Checked at load: a name no trial reports was found
    only after the first epoch (61 s into a quickstart), as a traceback."""
    for m, need in SIZED_METRICS.items():
        if image_size is not None and min(image_size) < need and re.fullmatch(
                rf"{split}/((fwd|bwd)_)?{m}_(mean|std)", name):
            return (f"{name!r} is scored only on images of at least {need}x{need} pixels (data.image_size is "
                    f"{list(image_size)}); rank by an SSIM, PSNR or MAE key instead")
    if split == "val":
        known = summary_keys("val", image_size) + list(TRAIN_KEYS) + [SYNTHESIS_KEY]
        if name in known or (name.startswith("train/") and len(name) > 6):
            return None
    else:
        known = summary_keys("test", image_size)
        vol = re.fullmatch(r"test/(fwd|bwd)_((vol|hu)_(ssim|psnr|mae)|vol_(sag_ssim|cor_ssim|tp_grad_mae)|hu25_(ms_ssim|psnr|mae))_(mean|std)", name)
        if name in known or vol:
            return None
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return (f"{name!r} is not a metric that is reported ({'validation, every epoch' if split == 'val' else 'test split'}); "
            f"use one of {close or known[:4]}" + (" ..." if not close else ""))
