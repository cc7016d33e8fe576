"""What the search found, handed on: the best trial's config as a file ``jobs/train.py`` accepts, and the
MLflow side - the trial table, figure and best config on the parent run, then the best trial's model
logged, scored on the test split (never used to select), registered and promoted if it beats the
champion."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .. import tracking
from ..config import Config, with_overrides
from ..io import storage
from ..io.checkpoints import checkpoint_location, local_checkpoint
from .plot import plot_summary
from .table import format_table

BEST_CONFIG_FILE = "best_config.yaml"

__all__ = ["BEST_CONFIG_FILE", "best_config", "register_best", "write_best_config"]


def best_config(cfg: Config, best: Mapping[str, Any]) -> Config:
    """The best trial's config: the search config + its overrides, run name ``<experiment>-best``."""
    best_cfg = with_overrides(cfg, best["overrides"])
    best_cfg.train.run_name = f"{cfg.tune.experiment_name}-best"
    return best_cfg


def write_best_config(cfg: Config, best_cfg: Config, best: Mapping[str, Any], folder: str) -> str:
    """``best_cfg`` written atomically beside the experiment, headed by the command that retrains it;
    returns its location."""
    path = storage.join(folder, BEST_CONFIG_FILE)
    retrain = (f"python jobs/train.py --config {path}" if not storage.is_uri(path)
               else f"copy it to a local file, then python jobs/train.py --config {BEST_CONFIG_FILE}")
    head = (f"# best trial {best['trial']} of study {cfg.tune.experiment_name} "
            f"({cfg.tune.metric} = {best['objective']:.4f})\n# retrain: {retrain}\n")
    storage.write_bytes_atomic(path, (head + best_cfg.to_yaml()).encode())
    return path


def register_best(client: Any, cfg: Config, best_cfg: Config, parent: str, rows: list[dict[str, Any]],
                  best: Mapping[str, Any], print_fn: Callable[[str], Any]) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """The parent run's summary (table, figure, best config) and, with ``tracking.register_best``, the
    registry step for the best trial. Returns (registered version, promotion decision) or (None, None)."""
    client.log_text(parent, format_table(rows, best["trial"]), "summary/trials.txt")
    tracking.log_json(client, parent, rows, "summary/trials.json")
    client.log_text(parent, best_cfg.to_yaml(), "summary/best_config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(parent, str(plot_summary(rows, cfg.tune.metric, cfg.tune.mode, Path(tmp) / "summary.png")), "summary")
    tracking.set_tags(client, parent, {"bidpm.best_trial": best["trial"], "bidpm.best_objective": f"{best['objective']:.6f}"})
    if not cfg.tracking.register_best:
        return None, None
    run_id = tracking.find_run(client, client.get_run(parent).info.experiment_id,
                               {tracking.TAG_STUDY: cfg.tune.experiment_name, tracking.TAG_TRIAL: best["trial"]}) or parent
    location = checkpoint_location(best["checkpoint_path"], cfg.storage_path)      # Tune drops s3:// / gs://
    with local_checkpoint(location) as folder:                                     # downloaded when remote
        model_uri = tracking.log_model(best_cfg, run_id, str(folder))
    scores = tracking.score_model(model_uri, best_cfg, "test")                     # test split: never used to select
    tracking.log_metrics(client, parent, scores, step=0)
    version = tracking.register(client, best_cfg, model_uri, run_id,
                                {"bidpm.study": cfg.tune.experiment_name, "bidpm.trial_id": best["trial"],
                                 "bidpm.checkpoint": best["checkpoint_path"],       # = the trial run's bidpm.best_checkpoint
                                 "bidpm.git_commit": tracking.git_commit(cfg)})
    decision = tracking.promote(client, best_cfg, version, challenger_scores=scores)
    tracking.set_tags(client, parent, {"bidpm.registered_version": version, **tracking.decision_tags(decision)})
    print_fn(decision.describe())
    return version, decision.__dict__
