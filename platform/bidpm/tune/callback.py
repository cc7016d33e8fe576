"""A Tune callback (driver side) that mirrors every trial into a nested MLflow run.

Driver side on purpose: trials run in actors that may sit on nodes without access to the
tracking store's credentials, and results already arrive at the driver. Holds only plain state
(config dict, URIs, run ids), so Tune can pickle it into the experiment checkpoint and a restored
study keeps writing to the same parent and child runs.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from ray.tune import Callback

from .. import tracking
from ..config import config_from_dict
from ..data.manifest import manifest_digest
from ..objective import Objective
from .checkpoints import checkpoint_location, local_checkpoint
from .space import overrides_of, trial_config


class MLflowTrialCallback(Callback):
    """on_trial_start: child run (params, resolved config, lineage tags); on_trial_result: per-epoch
    metrics; on_trial_complete/error: the trial's best checkpoint + its sample grid, run status."""

    def __init__(self, base_cfg: dict[str, Any], experiment_id: str, parent_run_id: str, tags: dict[str, str],
                 manifest: dict[str, Any]) -> None:
        self.base_cfg = base_cfg
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.manifest = {"content_digest": manifest_digest(manifest)}   # all log_dataset needs (small pickle)
        self.runs: dict[str, str] = {}                       # trial_id -> MLflow run id
        self.best: dict[str, tuple[float, Optional[str]]] = {}   # trial_id -> (objective, checkpoint path)
        # best epoch by Objective.best over the reported results in order (what tune.summary does too)
        self._client: Any = None
        self._cfg: Any = None

    # Tune pickles callbacks into the experiment state: keep the client and the parsed config out of it.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_cfg")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = self._cfg = None

    def get_state(self) -> Optional[dict]:
        return {"runs": dict(self.runs), "best": dict(self.best)}

    def set_state(self, state: dict) -> None:
        self.runs.update(state.get("runs", {}))
        self.best.update(state.get("best", {}))

    @property
    def cfg(self):
        """The study's Config, validated once (every trial result used to re-validate it)."""
        if self._cfg is None:
            self._cfg = config_from_dict(self.base_cfg, origin="study config")
        return self._cfg

    @property
    def client(self):
        if self._client is None:
            self._client, _ = tracking.connect(self.cfg)
        return self._client

    def trial_cfg(self, trial: Any):
        """The Config a trial trains (a study of cells overrides this)."""
        return trial_config(self.cfg, overrides_of(trial.config))

    def _run_id(self, trial: Any) -> str:
        if trial.trial_id not in self.runs:
            cfg = self.trial_cfg(trial)                                     # exactly what the trial trains
            run_id = tracking.trial_run(self.client, self.experiment_id, self.parent_run_id, cfg.tune.experiment_name,
                                        trial.trial_id, str(trial), cfg, self.tags)
            tracking.log_dataset(self.client, run_id, cfg, self.manifest)
            self.runs[trial.trial_id] = run_id
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        tracking.log_metrics(self.client, run_id, {k: v for k, v in result.items() if "/" in k or k == "epoch"}, step)
        objective = Objective.of_tune(self.cfg)
        old = self.best.get(trial.trial_id)
        value = result.get(objective.metric)
        if objective.better(value, old[0] if old else None):
            self.best[trial.trial_id] = (float(value), result.get("checkpoint_path"))

    def _finish(self, trial: Any, status: str) -> None:
        run_id = self._run_id(trial)
        best = self.best.get(trial.trial_id)
        if best is not None:
            self.client.set_tag(run_id, "bidpm.best_objective", f"{best[0]:.6f}")
            self.client.set_tag(run_id, "bidpm.best_checkpoint", str(best[1]))
            self._log_checkpoint(run_id, trial, best[1])
        self.client.set_terminated(run_id, status=status)

    def _log_checkpoint(self, run_id: str, trial: Any, path: Optional[str]) -> None:
        """The best epoch's checkpoint folder and its sample grid PNG; a warning (never a silent skip)
        when there is none or it cannot be read from the driver. Object-store checkpoints are
        downloaded to a temporary folder first (MLflow logs local files only)."""
        cfg = self.cfg
        if not path:
            print(f"warning: trial {trial.trial_id}: its best epoch by {cfg.tune.metric} reported no checkpoint; "
                  f"nothing logged to MLflow run {run_id}", file=sys.stderr)
            return
        location = checkpoint_location(path, cfg.storage_path)
        try:
            with local_checkpoint(location) as folder:
                if cfg.tracking.log_checkpoints:
                    self.client.log_artifacts(run_id, str(folder), "best_checkpoint")
                for png in sorted(folder.glob("*.png")):
                    self.client.log_artifact(run_id, str(png), "sample_grid")
        except OSError as exc:                 # FileNotFoundError, pyarrow I/O errors
            print(f"warning: trial {trial.trial_id}: best checkpoint not logged to MLflow run {run_id}: {exc}",
                  file=sys.stderr)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAILED")
