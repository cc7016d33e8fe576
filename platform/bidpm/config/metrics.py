"""The metric-name schema every score follows (``bidpm.evaluation`` produces it, Tune and promotion
select by it): ``<split>/<fwd|bwd>_<metric>_<mean|std>``, ``<split>/<metric>_mean`` (both directions)
and ``<split>/images``. Pure Python, so a config validates its metric names without torch."""

from __future__ import annotations

import difflib
import re
from typing import Optional

METRICS = ("ssim", "psnr", "mae")
SHORT = {"forward": "fwd", "backward": "bwd"}   # direction -> the key's short name
TRAIN_KEYS = ("epoch", "step")     # plus anything under train/ (loss components differ per method)
SYNTHESIS_KEY = "val/synthesis_ms_per_slice"   # every epoch: synthesis time per slice on the training grid, its device
NFE_KEY = "nfe"                    # every search trial: its Euler steps (a cost objective, search.report)

__all__ = ["METRICS", "NFE_KEY", "SHORT", "SYNTHESIS_KEY", "TRAIN_KEYS", "metric_problem", "summary_keys"]


def summary_keys(split: str) -> list[str]:
    """Every key a scored grid produces for ``split`` (``GridScores.summary``)."""
    return ([f"{split}/{d}_{m}_{s}" for d in SHORT.values() for m in METRICS for s in ("mean", "std")]
            + [f"{split}/{m}_mean" for m in METRICS] + [f"{split}/images"])


def metric_problem(name: str, split: str) -> Optional[str]:
    """Why no result will carry metric ``name`` (None when one will). ``split``: "val" for what trials and
    checkpoints are ranked by, "test" for promotion. Checked at load: a name no trial reports was found
    only after the first epoch (61 s into a quickstart), as a traceback."""
    if split == "val":
        known = summary_keys("val") + list(TRAIN_KEYS) + [SYNTHESIS_KEY]
        if name in known or (name.startswith("train/") and len(name) > 6):
            return None
    else:
        known = summary_keys("test")
        vol = re.fullmatch(r"test/(fwd|bwd)_((vol|hu)_(ssim|psnr|mae)|vol_(sag_ssim|cor_ssim|tp_grad_mae)|hu25_(ms_ssim|psnr|mae))_(mean|std)", name)
        if name in known or vol:
            return None
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return (f"{name!r} is not a metric that is reported ({'validation, every epoch' if split == 'val' else 'test split'}); "
            f"use one of {close or known[:4]}" + (" ..." if not close else ""))
