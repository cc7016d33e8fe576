"""Training objectives and synthesis: Bi-DPM (paper Eq. 5-9) and the flow-matching baselines.

>>> method = build_method(cfg.method).to(device)
>>> out = method.loss(model, Batch(source, target, paired))      # out.total.backward(); out.components
>>> fake_t2 = method.sample(ema_model, t1, direction="forward")    # Algorithm 2 on cfg.method.time_grid
>>> fake_t1 = method.sample(ema_model, t2, grid=[0, 0.25, 1], direction="backward")
"""

from __future__ import annotations

from ..config import MethodConfig
from .base import Batch, LossOutput, Method
from .solver import DIRECTIONS, Direction, check_direction, check_grid, euler_integrate, euler_states, uniform_grid
from .baselines import ICFM, OTCFM, VPCFM, FlowMatching, RectifiedFlow, ot_permutation
from .bidpm import BiDPM, build_bidpm
from .fewstep import MeanFlow, Shortcut

__all__ = [
    "Batch", "BiDPM", "DIRECTIONS", "Direction", "FlowMatching", "ICFM", "LossOutput", "MeanFlow", "Method", "OTCFM",
    "RectifiedFlow", "Shortcut",
    "VPCFM", "build_bidpm", "build_method", "check_direction", "check_grid", "euler_integrate", "euler_states", "ot_permutation",
    "uniform_grid",
]


def build_method(cfg: MethodConfig) -> Method:
    """The objective named by ``cfg.name`` (bidpm, rf, icfm, otcfm, vpcfm, cyclegan, shortcut, meanflow), on
    ``cfg.time_grid``.

    Only Bi-DPM builds a paired distance (so only Bi-DPM can fail on missing LPIPS weights).
    """
    if cfg.name == "bidpm":
        return build_bidpm(cfg)
    if cfg.name == "rf":
        return RectifiedFlow(cfg.time_grid)
    if cfg.name == "icfm":
        return ICFM(cfg.time_grid, sigma=cfg.cfm_sigma)
    if cfg.name == "otcfm":
        return OTCFM(cfg.time_grid, sigma=cfg.cfm_sigma)
    if cfg.name == "vpcfm":
        return VPCFM(cfg.time_grid)
    if cfg.name == "shortcut":
        return Shortcut(cfg.time_grid, cfg.shortcut_levels, cfg.shortcut_consistency_fraction)
    if cfg.name == "meanflow":
        return MeanFlow(cfg.time_grid, cfg.meanflow_distinct_fraction, cfg.meanflow_adaptive_p)
    if cfg.name == "cyclegan":
        from .cyclegan import CycleGAN

        return CycleGAN(cfg.time_grid, cfg.cycle_lambda, cfg.identity_lambda)
    raise ValueError(f"method.name: unknown method {cfg.name!r}; choose bidpm, rf, icfm, otcfm, vpcfm, cyclegan, shortcut or meanflow")
