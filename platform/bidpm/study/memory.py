"""A study's cases for the GPU memory plan (``bidpm.plan``): every method row as its cells train it."""

from __future__ import annotations

from ..config import Config
from ..plan.preflight import Case, job_cases
from .cells import Cell, cell_config

__all__ = ["study_cases"]


def study_cases(cfg: Config) -> list[Case]:
    """The config as given, then each method row fully paired and, if any ratio is < 1, at the smallest
    ratio (half of each batch unpaired: Bi-DPM's MMD term on). Seeds and training fractions do not change
    a step's memory."""
    out = job_cases(cfg, "train")
    ratios = [1.0] if all(r >= 1.0 for r in cfg.study.pairing_ratios) else sorted(
        {1.0 if r >= 1.0 else min(cfg.study.pairing_ratios) for r in cfg.study.pairing_ratios}, reverse=True)
    for m in cfg.study.methods:
        for r in ratios:
            cell = Cell("plan", m.label, m.name, r, cfg.train.seed, 1.0)
            out.append(Case(f"study: {m.label} at {100 * r:g}% paired", cell_config(cfg, cell)))
    return out
