"""Which searched parameters mattered for the main objective: Optuna's importance evaluators (fANOVA by
default, PED-ANOVA with ``tune.importance_evaluator: ped_anova``) on the study of the search's trials, a
table for the console, and Optuna's parallel-coordinate and slice plots of the main objective.

Why fANOVA by default: PED-ANOVA compares the top quantile of trials with the rest and needs more
trials than a small search has; fANOVA (a random forest over the trials) answers from a handful.
fANOVA only ranks parameters every trial has, so the grid points t_i and the interior weight (which
exist for one N only) drop out of the ranking over all trials; they are ranked again within each N
that has enough trials (``importances_by_n``): "does t_1 matter at N = 2?" is a question of its own.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

from ..config import Config
from ..io.storage import write_bytes_atomic
from ..plots import png_bytes, pyplot
from ..tables import fixed_width
from .objectives import objective_pairs

PARALLEL_PNG, SLICE_PNG = "parallel_coordinate.png", "slice.png"
MIN_TRIALS_PER_N = 3      # fewer trials at one N rank nothing (a forest on two points)

__all__ = ["PARALLEL_PNG", "SLICE_PNG", "format_importances", "importances", "importances_by_n", "plot_views"]


def _main(t: Any) -> float:
    """The main objective of a trial (the first value); a module function so plots and evaluators agree."""
    return float(t.values[0])


def importances(cfg: Config, study: Any) -> tuple[dict[str, float], Optional[str]]:
    """({param: importance} ordered high to low, normalised to sum 1, or {} and why not)."""
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2 or not any(t.params for t in done):
        return {}, f"parameter importance needs >= 2 finished trials with searched parameters (got {len(done)})"
    evaluator = (optuna.importance.PedAnovaImportanceEvaluator() if cfg.tune.importance_evaluator == "ped_anova"
                 else optuna.importance.FanovaImportanceEvaluator(seed=cfg.tune.seed))
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator, target=_main)), None
    except (ValueError, RuntimeError) as exc:        # e.g. no parameter common to every trial
        return {}, f"parameter importance not computed: {exc}"


def importances_by_n(cfg: Config, study: Any, min_trials: int = MIN_TRIALS_PER_N) -> dict[int, dict[str, float]]:
    """{N: importances among the trials with N steps} for every N with >= ``min_trials`` finished trials
    and a parameter of its own to rank (N = 1 has no grid to place)."""
    import optuna
    from optuna.trial import TrialState

    groups: dict[int, list[Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "n_steps" in t.params:
            groups.setdefault(int(t.params["n_steps"]), []).append(t)
    out: dict[int, dict[str, float]] = {}
    for n, trials in sorted(groups.items()):
        if len(trials) < min_trials or not any(k != "n_steps" for k in trials[0].params):
            continue
        sub = optuna.create_study(directions=[d for d in study.directions], storage=optuna.storages.InMemoryStorage())
        for t in trials:
            keep = {k: v for k, v in t.params.items() if k != "n_steps"}
            sub.add_trial(optuna.trial.create_trial(params=keep, distributions={k: t.distributions[k] for k in keep},
                                                    values=t.values))
        imp, _ = importances(cfg, sub)
        if imp:
            out[n] = imp
    return out


def format_importances(cfg: Config, imp: dict[str, float], by_n: Optional[dict[int, dict[str, float]]] = None) -> str:
    """The importance table, most important first: over all trials, then within each N (``importances_by_n``)."""
    metric = objective_pairs(cfg)[0][0]
    head = f"parameter importance for {metric} ({cfg.tune.importance_evaluator})"
    rows = [[k, "all trials", f"{v:.3f}"] for k, v in imp.items()]
    for n, per in (by_n or {}).items():
        rows += [[k, f"N = {n}", f"{v:.3f}"] for k, v in per.items()]
    return head + "\n" + fixed_width(["parameter", "among", "importance"], rows)


def plot_views(cfg: Config, study: Any, folder: str | Path) -> list[Path]:
    """Optuna's parallel-coordinate and slice plots of the main objective, written atomically in ``folder``."""
    from optuna.visualization.matplotlib import plot_parallel_coordinate, plot_slice

    import optuna

    plt = pyplot()
    metric = objective_pairs(cfg)[0][0]
    out = []
    for name, fn in ((PARALLEL_PNG, plot_parallel_coordinate), (SLICE_PNG, plot_slice)):
        with plt.style.context("default"), warnings.catch_warnings():   # Optuna sets ggplot: keep it out of later figures
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # its matplotlib plots
            ax = fn(study, target=_main, target_name=metric)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            path = Path(folder) / name
            write_bytes_atomic(str(path), png_bytes(fig, dpi=90))
        out.append(path)
    return out
