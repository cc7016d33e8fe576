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

    cfg = trial_config(config_from_dict(base_cfg, origin="study config"), overrides_of(config))
    name, runs = train_run_name(tune.get_context().get_trial_name()), experiment_dir(cfg, cfg.tune.experiment_name) + "/" + TRAIN_RUNS
    with AttemptClock(f"{runs}/{name}/{ATTEMPTS}", *held_devices(cfg.train)) as clock:   # device-hours, every attempt
        run_training(cfg, callbacks=[clock.callback()], resume=True, name=name, storage_path=runs, datasets=datasets)
