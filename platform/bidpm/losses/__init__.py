"""Distances of the Bi-DPM objective: per-sample paired distances (Eq. 7) and MMD (Eq. 8)."""

from __future__ import annotations

from .mmd import MMD, build_mmd, kernel_matrix, median_heuristic, mmd2
from .paired import (
    L1Distance,
    L2Distance,
    LPIPSDistance,
    LPIPSWeightsUnavailable,
    PseudoHuberDistance,
    backbone_weights_file,
    build_paired_distance,
    hub_checkpoint_dir,
    resolve_backbone_weights,
)

__all__ = [
    "L1Distance", "L2Distance", "LPIPSDistance", "LPIPSWeightsUnavailable", "MMD", "PseudoHuberDistance",
    "backbone_weights_file", "build_mmd", "build_paired_distance", "hub_checkpoint_dir", "kernel_matrix",
    "median_heuristic", "mmd2", "resolve_backbone_weights",
]
