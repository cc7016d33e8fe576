"""One search trial, as the Tune trial actor runs it: the search config + the trial's overrides -> one Ray
Train run, resumable by name. Apart from the runner because an actor imports the module of its
function: this one loads what training needs (no MLflow, no Optuna), so a trial starts seconds sooner.
"""

from __future__ import annotations

from typing import Any, Optional

from ray import tune

from ..config import config_from_dict
from ..tune.names import TRAIN_RUNS, experiment_dir, train_run_name
from .space import overrides_of, trial_config

__all__: list[str] = []


def _trial(config: dict[str, Any], base_cfg: dict[str, Any], datasets: Optional[dict[str, Any]]) -> None:
    """One trial (module docstring). Its name is Tune's trainable name, which a restored experiment
    checks: it stays ``_trial``."""
    from ..train import run_training
    from ..tune.cost import ATTEMPTS, AttemptClock, held_devices
    from .report import NFE, WithMetrics

    cfg = trial_config(config_from_dict(base_cfg, origin="study config"), overrides_of(config))
    name, runs = train_run_name(tune.get_context().get_trial_name()), experiment_dir(cfg, cfg.tune.experiment_name) + "/" + TRAIN_RUNS
    nfe = {NFE: cfg.method.n_steps}                                      # Optuna's objectives
    if (stored := finished_run(cfg, f"{runs}/{name}")) is not None:     # trained before a driver kill: report it
        tune.report({**stored, **cost_so_far(f"{runs}/{name}/{ATTEMPTS}"), **nfe})
        return
    with AttemptClock(f"{runs}/{name}/{ATTEMPTS}", *held_devices(cfg.train)) as clock:   # device-hours, every attempt
        report = WithMetrics(clock.callback(), nfe)
        run_training(cfg, callbacks=[report], resume=True, name=name, storage_path=runs, datasets=datasets)


def finished_run(cfg: Any, run_dir: str) -> Optional[dict[str, Any]]:
    """The best kept checkpoint's metrics (+ ``checkpoint_path``) of a Train run that trained all
    ``train.epochs`` already, else None.

    Why: a driver killed after a trial's Train run ended but before Tune saved that the trial ended
    restores the trial as unfinished; its Train run then resumes at the last epoch, trains nothing and
    reports nothing, and Tune stops the whole search on a result without the objective. Reporting the
    stored result instead ends the trial as it had ended, once, without starting a worker group."""
    from ray.train import Result

    from ..io import storage
    from ..train.launch import best_checkpoint

    if not storage.exists(run_dir):
        return None
    try:
        result = Result.from_path(run_dir)
    except RuntimeError:                       # no checkpoint manager snapshot yet: nothing finished
        return None
    if int((result.metrics or {}).get("epoch", 0)) < cfg.train.epochs:
        return None
    ck = best_checkpoint(result, cfg)
    metrics = next((m for c, m in result.best_checkpoints or [] if ck is not None and c.path == ck.path), result.metrics)
    return {**metrics, "checkpoint_path": ck.path if ck is not None else None}


def cost_so_far(attempts: str) -> dict[str, Any]:
    """The ``cost/*`` entries of every attempt recorded (``tune.cost``), for a trial that runs no new one."""
    from ..tune.cost import read_attempts, running_total, summed

    total = summed(read_attempts(attempts))
    out = running_total(total, 0.0, total["device"], total["devices"] or 0.0)
    return {**out, "cost/devices": total["devices"], "cost/attempts": total["attempts"]}   # no attempt of its own
