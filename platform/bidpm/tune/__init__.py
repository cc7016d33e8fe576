"""Ray Tune + Optuna search over Bi-DPM's time grid, step weights, lambda_u and MMD kernel.

``space`` is pure Optuna (no Ray); ``launch`` runs the study (one Ray Train run per trial) and
hands every trial to ``bidpm.tracking``; ``summary`` prints the table and draws the plots.
"""

from .space import apply_to, define_by_run, overrides_of, sample_overrides

__all__ = ["apply_to", "define_by_run", "overrides_of", "sample_overrides", "run_study"]


def run_study(*args, **kwargs):  # noqa: D401 - thin lazy import so `bidpm.tune.space` stays Ray-free
    """See ``bidpm.tune.launch.run_study``."""
    from .launch import run_study as _run

    return _run(*args, **kwargs)
