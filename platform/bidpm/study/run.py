"""Run a study: every cell (method x pairing ratio x seed x training fraction) one Ray Tune trial running
one Ray Train run and its scoring (``score``), so cells run in parallel across the cluster; then the
report (``report``). One set of shards serves every cell: pairing and fractions are decided at read time.

Resume: the same command restores the Tune experiment (finished cells kept, interrupted ones continued
from their Train checkpoints); a cell with a score file is never retrained; cells left without scores
are retried once, under the concurrency limit. ``study.max_concurrent_trials`` unset: as many cells
as the cluster's resources fit now (set it on an autoscaling cluster, whose nodes are not there yet).
MLflow: one parent run (``bidpm.kind`` study-grid) and a child run per cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import ray
from ray import tune
from ray.tune import RunConfig, TuneConfig, Tuner

from .. import tracking
from ..config import Config
from ..io.lease import folder_lease
from ..tune.experiment import ExperimentRuns, check_finished, preflight
from ..tune.mlflow import MLflowTrialCallback
from ..tune.names import also_known_as
from ..tune.names import trial_name as named
from ..tune.reporter import progress_settings
from ..tune.watchdog import StallWatchdog
from .cells import Cell, cell_config, cells_by_id, check_cells, expand_cells, read_cell, resolve_subject_counts, study_dir
from .spec import check_spec
from .progress import CellProgress
from .report import write_report
from .memory import study_cases
from .score import _cell_trial

__all__ = ["StudyResult", "run_study"]


@dataclass
class StudyResult:
    """What a study produced: the scored cells (``cells/<id>.json`` records), the cells without scores,
    the report's files (name -> location; none when no cell was scored) and the MLflow parent run."""

    folder: str
    cells: list[dict[str, Any]]
    missing: list[str]
    report: dict[str, str] = field(default_factory=dict)
    parent_run_id: Optional[str] = None


def cell_trial_name(trial: Any) -> str:
    """``cell_<cell id>``: a trial's name and folder say which cell it is."""
    cell = trial.config.get("cell")
    return named("cell", cell) if isinstance(cell, str) else named("trial", trial.trial_id)


class CellCallback(MLflowTrialCallback):
    """A child MLflow run per cell, holding the cell's own config (method, ratio, seed, fraction)."""

    def trial_cfg(self, trial: Any) -> Config:
        return cell_config(self.cfg, cells_by_id(self.cfg)[trial.config["cell"]])


# studies started before the study had its own room pickled these names under bidpm.tune.*
also_known_as("bidpm.tune.study", _name=cell_trial_name, StudyCellCallback=CellCallback)
also_known_as("bidpm.tune.progress", CellProgress=CellProgress)


def run_study(cfg: Config) -> StudyResult:
    """The whole study: checks, the cells (restored or new), the retry of cells without scores, the
    report; the parent run ends FINISHED (every cell scored) or FAILED (cells missing). Needs Ray."""
    from ..raycluster.resources import concurrency

    found = preflight(cfg, job="study", memory_cases=study_cases(cfg) if cfg.train.use_gpu else None)                 # a cell larger than a fixed cluster would wait forever
    if cfg.study.train_subjects:
        counts, cfg = cfg.study.train_subjects, resolve_subject_counts(cfg, found.manifest)
        print(f"study.train_subjects {counts}: fractions {[round(f, 4) for f in cfg.study.train_fractions]} of the "
              f"training subjects in the shards", flush=True)
    cells = expand_cells(cfg)
    check_cells(cfg, cells, found.manifest)
    where = study_dir(cfg)
    with folder_lease(where, f"study {cfg.study.name!r}"):   # one writer: a second study of this name is refused
        check_spec(cfg)
        runs = ExperimentRuns(cfg, cfg.study.name, where, found)
        with runs.stopping_safely("running the study"):
            runs.open(kind="study-grid")
            callbacks: list[Any] = [runs.callback(CellCallback, cfg.to_dict())] if runs.parent else []
            callbacks.append(CellProgress(len(cells)))
            # the weights each cell was scored with, from the tracking database (not the shared folder)
            digests = {name.removeprefix("cell_"): sha for name, sha in tracking.child_tags(
                runs.client, runs.experiment_id, runs.parent, tracking.TAG_WEIGHTS).items()} if runs.parent else {}
            trainable = tune.with_resources(tune.with_parameters(_cell_trial, base_cfg=cfg.to_dict(), digests=digests),
                                            {"cpu": cfg.tune.trial_cpus})
            limit = concurrency(cfg, ray.cluster_resources(), cfg.study.max_concurrent_trials)
            st = cfg.study
            print(f"study {st.name!r}: {len(cells)} cells ({len(st.methods)} methods x {len(st.pairing_ratios)} ratios "
                  f"(paired by {cfg.data.pairing_unit}) x {len(st.seeds)} seeds x {len(st.train_fractions)} fractions), up to {limit} at once; folder {where}", flush=True)
            if Tuner.can_restore(where):
                # Errored cells are not resumed here: Tune re-queues them all at once, past max_concurrent_trials,
                # and their Train runs then starve each other; they are retried below under the limit.
                print(f"restoring {where}: finished cells kept, interrupted ones resumed", flush=True)
                check_finished(Tuner.restore(where, trainable, resume_unfinished=True, resume_errored=False,
                                             restart_errored=False).fit(), 0, where)
            else:
                check_finished(_tuner(cfg, trainable, [c.id for c in cells], st.name, callbacks, limit).fit(), len(cells), where)
            missing = _unscored(cfg, cells)
            if missing and Tuner.can_restore(where) and st.retry_failed:
                name = f"{st.name}-retry-{time.strftime('%Y%m%d-%H%M%S')}"
                print(f"retrying {len(missing)} cell(s) without scores as {name}: {', '.join(missing)}", flush=True)
                check_finished(_tuner(cfg, trainable, missing, name, callbacks, limit).fit(), len(missing), where)
            scored = {c.id: read_cell(cfg, c.id) for c in cells}
            missing = [i for i, r in scored.items() if r is None]
            done = [r for r in scored.values() if r is not None]
            # cells whose end no callback recorded (a killed driver): as their scores say
            runs.sweep("FAILED", {f"cell_{d['cell']['id']}": "FINISHED" for d in done})
            out = StudyResult(where, done, missing, parent_run_id=runs.parent)
            if missing:
                print(f"\n{len(missing)} cell(s) have no scores (failed: see the messages above): {', '.join(missing)}\n"
                      "rerun the same command to retry them; the report covers the others")
            if done:
                out.report = write_report(cfg, where, done, runs.client, runs.parent,
                                      n_train=found.manifest["splits"]["train"]["subjects"])
            runs.finish("FAILED" if missing or not done else "FINISHED")
        return out


def _unscored(cfg: Config, cells: list[Cell]) -> list[str]:
    return [c.id for c in cells if read_cell(cfg, c.id) is None]


def _tuner(cfg: Config, trainable: Any, ids: list[str], name: str, callbacks: list[Any], limit: int) -> Tuner:
    """A Tune experiment over the cells ``ids`` (one trial each), at most ``limit`` at once."""
    return Tuner(trainable, param_space={"cell": tune.grid_search(ids)},
                 tune_config=TuneConfig(num_samples=1, max_concurrent_trials=limit,
                                        trial_name_creator=cell_trial_name, trial_dirname_creator=cell_trial_name),
                 run_config=RunConfig(name=name, storage_path=cfg.storage_path,
                                      **progress_settings(cfg, callbacks, None, StallWatchdog.for_config(cfg, cfg.study.name))))
