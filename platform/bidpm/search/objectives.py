"""What a search optimises: one objective (``tune.metric``/``mode``, the default) or several
(``tune.objectives``), and what that means for the sampler and the scheduler.

Why ASHA is off under a multi-objective search: Ray Tune's schedulers rank trials by ONE metric, and
ASHA stopping trials by quality alone would stop exactly the cheap trials (N = 1: lower SSIM, fewest
steps) that a Pareto front exists to keep - the front would be decided by the scheduler, not by the
sampler. So a multi-objective search runs every trial to ``train.epochs`` (``FIFOScheduler``), whatever
``tune.scheduler`` says, and the run says so once at its start (``scheduler_note``). Single-objective
searches keep ``tune.scheduler`` (ASHA by default) exactly as before.
"""

from __future__ import annotations

from typing import Any, Optional

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from ..config import Config
from .report import NFE

__all__ = ["NFE", "directions", "is_multi", "make_sampler", "objective_pairs", "scheduler_for", "scheduler_note"]


def is_multi(cfg: Config) -> bool:
    """A multi-objective search (``tune.objectives`` set)."""
    return bool(cfg.tune.objectives)


def objective_pairs(cfg: Config) -> list[tuple[str, str]]:
    """(metric, mode) of every objective, the main one first; one pair for a single-objective search."""
    if is_multi(cfg):
        return [(o.metric, o.mode) for o in cfg.tune.objectives]
    return [(cfg.tune.metric, cfg.tune.mode)]


def directions(cfg: Config) -> list[str]:
    """Optuna's study directions for the objectives."""
    return ["maximize" if mode == "max" else "minimize" for _, mode in objective_pairs(cfg)]


def make_sampler(cfg: Config) -> Any:
    """The seeded multi-objective sampler ``tune.mo_sampler`` names (Optuna's TPE or NSGA-II)."""
    import optuna

    t = cfg.tune
    if t.mo_sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=t.nsga2_population, seed=t.seed)
    return optuna.samplers.TPESampler(seed=t.seed)


def scheduler_for(cfg: Config) -> TrialScheduler:
    """ASHA or FIFO per ``tune.scheduler``; always FIFO under a multi-objective search (module docstring)."""
    t = cfg.tune
    if is_multi(cfg) or t.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                         grace_period=min(t.asha_grace_period, cfg.train.epochs), reduction_factor=t.asha_reduction_factor)


def scheduler_note(cfg: Config) -> Optional[str]:
    """The line a multi-objective search prints at its start (None for a single-objective one)."""
    if not is_multi(cfg):
        return None
    names = ", ".join(f"{mode} {metric}" for metric, mode in objective_pairs(cfg))
    off = " (tune.scheduler=asha is ignored: ASHA ranks by one metric)" if cfg.tune.scheduler == "asha" else ""
    return (f"multi-objective search ({names}; sampler {cfg.tune.mo_sampler}): every trial runs all "
            f"{cfg.train.epochs} epochs{off}")
