"""The names an experiment leaves on disk and in Ray: its folder, a trial's Tune name (``<kind>_<key>``:
``trial_<id>`` in a search, ``cell_<cell id>`` in a study), the Ray Train run the trial starts
(``train_<key>`` under ``train_runs/``), and the import paths its pickles name. One rule each, so the
trial that starts a run and the watchdog that looks for it agree, and earlier folders still resume."""

from __future__ import annotations

import sys
import types
from typing import Any

TRAIN_RUNS = "train_runs"

__all__ = ["TRAIN_RUNS", "also_known_as", "experiment_dir", "train_run_name", "trial_name"]


def experiment_dir(cfg: Any, name: str) -> str:
    """``<train.storage_path>/<name>``: where Tune keeps experiment ``name`` (local folder or URI)."""
    return cfg.storage_path.rstrip("/") + "/" + name


def trial_name(kind: str, key: str) -> str:
    """``trial_<id>`` / ``cell_<cell id>``: Tune's trial and folder name (its default holds the whole config)."""
    return f"{kind}_{key}"


def train_run_name(trial: str) -> str:
    """The Ray Train run of the trial named ``trial``: ``train_<key>``."""
    return "train_" + trial.partition("_")[2]


def also_known_as(old_module: str, **objects: Any) -> None:
    """Make ``objects`` importable as ``old_module.<name>`` too.

    Why: Tune pickles an experiment's callbacks, searcher and trial-name function by import path into
    its folder (``tuner.pkl``, ``searcher-state-*.pkl``), and ``Tuner.restore`` unpickles them there.
    Experiments started before the search, study and tune rooms existed name ``bidpm.tune.launch``,
    ``bidpm.tune.study``, ``bidpm.tune.space``, ``bidpm.tune.callback`` and ``bidpm.tune.progress``;
    each runner registers what moved, so such an experiment still resumes (the next save writes the
    new paths)."""
    mod = sys.modules.get(old_module)
    if mod is None:
        mod = types.ModuleType(old_module, "names moved elsewhere, kept for experiments pickled before the move")
        sys.modules[old_module] = mod
    for key, value in objects.items():
        setattr(mod, key, value)
