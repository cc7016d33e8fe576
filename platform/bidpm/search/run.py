"""Run the ``tune_steps`` search: Ray Tune + OptunaSearch (TPE, seeded) + ASHA, one Ray Train run per trial.

Each trial is a Tune function trainable that builds and fits its own ``TorchTrainer``
(``train.run_training``), with ``TuneReportCallback`` forwarding the workers' per-epoch reports to
Tune; the trial itself only coordinates (``tune.trial_cpus``). The experiment lives in
``<train.storage_path>/<tune.experiment_name>``: rerunning restores it (searcher and scheduler state,
finished trials kept, unfinished ones continued from their checkpoints), and once the whole search
(registration included) has finished, its ``study.json`` is reported instead of rerun.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from ray import tune
from ray.tune import RunConfig, TuneConfig, Tuner

from ..config import Config
from ..io import storage
from ..tune.experiment import ExperimentFailed, ExperimentRuns, check_finished, preflight
from ..tune.mlflow import MLflowTrialCallback
from ..io.lease import folder_lease
from ..tune.names import also_known_as, experiment_dir
from ..tune.names import trial_name as named
from ..tune.reporter import progress_settings
from ..tune.watchdog import StallWatchdog
from .best import best_config, register_best, write_best_config
from .multi import announce, make_searcher, report_multi, row_values
from .objectives import is_multi, scheduler_for
from .space import overrides_of, sample_overrides, trial_config
from .trial import _trial
from .table import SearchReporter, best_row, format_table, trial_row

STUDY_FILE = "study.json"

__all__ = ["STUDY_FILE", "SearchResult", "load_finished", "run_search"]


@dataclass
class SearchResult:
    """What a search produced (also its ``study.json``, whose keys stay as they were)."""

    experiment_dir: str
    rows: list[dict[str, Any]]
    best_trial: Optional[str]
    best_config_path: Optional[str] = None
    parent_run_id: Optional[str] = None
    model_version: Optional[str] = None
    promotion: Optional[dict[str, Any]] = None
    pareto: Optional[dict[str, Any]] = None    # multi-objective only: front, importances, budgets (search.multi)
    reused: bool = False                 # True: a finished search was reported, nothing ran

    def table(self) -> str:
        return format_table(self.rows, self.best_trial)


def trial_name(trial: Any) -> str:
    """``trial_<id>``: short trial names and folders (Tune's default holds the whole config)."""
    return named("trial", trial.trial_id)


class SearchTrialCallback(MLflowTrialCallback):
    """A child MLflow run per trial, holding the config the trial trains."""

    def trial_cfg(self, trial: Any) -> Config:
        return trial_config(self.cfg, overrides_of(trial.config))


# experiments started before the search had its own room pickled these names under bidpm.tune.*
also_known_as("bidpm.tune.launch", trial_name=trial_name)
also_known_as("bidpm.tune.space", sample_overrides=sample_overrides)
also_known_as("bidpm.tune.callback", MLflowTrialCallback=SearchTrialCallback)
also_known_as("bidpm.tune.progress", BidpmReporter=SearchReporter)


def load_finished(cfg: Config) -> Optional[SearchResult]:
    """The finished search's record, or None when it has not finished (or never ran). Local or URI."""
    loc = storage.join(experiment_dir(cfg, cfg.tune.experiment_name), STUDY_FILE)
    if not storage.is_file(loc):
        return None
    return SearchResult(**{**json.loads(storage.read_bytes(loc)), "reused": True})


def run_search(cfg: Config, *, print_fn: Callable[[str], Any] = print) -> SearchResult:
    """The whole search: checks, Tune, MLflow runs, best config, registry promotion. Needs a connected Ray.

    Order: the pre-flight checks (tracking store and registry name, a trial fits, shards); a finished
    search is reported and returned; the datasets and their step count (before any MLflow run); then
    the parent run and the trials, every exit after it ending the runs (``ExperimentRuns``).
    """
    from ..train.launch import checked_datasets

    name = cfg.tune.experiment_name
    found = preflight(cfg, registry=cfg.tracking.enabled and cfg.tracking.register_best)
    folder = experiment_dir(cfg, name)
    with folder_lease(folder, f"search {name!r}"):     # one writer: a second search of this name is refused
        if cfg.tune.resume:
            done = load_finished(cfg)
            if done is not None:
                print_fn(f"study {name!r} already finished ({folder}); reporting it, nothing rerun "
                         f"(choose a new tune.experiment_name or set tune.resume=false to run again)")
                return done
        elif storage.exists(folder):
            print_fn(f"tune.resume=false: deleting the previous study folder {folder}")
            storage.remove_tree(folder)
        datasets = checked_datasets(cfg)                # one read (materialised) shared by every trial
        runs = ExperimentRuns(cfg, name, folder, found, print_fn)
        with runs.stopping_safely("the summary / registry step"):
            runs.open(replace=not cfg.tune.resume)
            callbacks = [runs.callback(SearchTrialCallback, cfg.to_dict())] if runs.parent else []
            results = check_finished(_tuner(cfg, folder, datasets, callbacks, print_fn).fit(), cfg.tune.num_samples, folder)
            out, best_cfg = _summarise(cfg, folder, results, print_fn)
            out.parent_run_id = runs.parent
            if runs.parent is not None:
                # a trial whose end the callback never recorded (its driver died first) is ended as Tune saw it
                runs.sweep("KILLED", {r["trial"]: "FAILED" if r["status"] == "error" else "FINISHED" for r in out.rows})
                best = next(r for r in out.rows if r["trial"] == out.best_trial)
                out.model_version, out.promotion = register_best(runs.client, cfg, best_cfg, runs.parent, out.rows, best, print_fn)
                if is_multi(cfg):
                    out.pareto = report_multi(cfg, folder, out.rows, runs.client, runs.parent, lambda r: best_config(cfg, r), print_fn)
                runs.finish()
            elif is_multi(cfg):
                out.pareto = report_multi(cfg, folder, out.rows, None, None, lambda r: best_config(cfg, r), print_fn)
            record = {k: v for k, v in asdict(out).items() if k != "reused" and not (k == "pareto" and v is None)}
            storage.write_bytes_atomic(storage.join(folder, STUDY_FILE), json.dumps(record, indent=1, default=str).encode())
        return out


def _tuner(cfg: Config, folder: str, datasets: Any, callbacks: list[Any], print_fn: Callable[[str], Any]) -> Tuner:
    """A new Tune experiment, or the one in ``folder`` restored (its RunConfig - callbacks, watchdog,
    reporter - comes back from the experiment's pickle)."""
    trainable = tune.with_resources(tune.with_parameters(_trial, base_cfg=cfg.to_dict(), datasets=datasets),
                                    {"cpu": cfg.tune.trial_cpus})
    t = cfg.tune
    announce(cfg, folder, print_fn)
    if t.resume and Tuner.can_restore(folder):
        print_fn(f"restoring study {t.experiment_name!r} from {folder}: finished trials kept, unfinished resumed")
        return Tuner.restore(folder, trainable, resume_unfinished=True, resume_errored=True)
    searcher, scheduler = make_searcher(cfg, folder, print_fn), scheduler_for(cfg)   # FIFO under several objectives
    return Tuner(
        trainable,
        tune_config=TuneConfig(metric=t.metric, mode=t.mode, search_alg=searcher, scheduler=scheduler,
                               num_samples=t.num_samples, max_concurrent_trials=t.max_concurrent_trials,
                               trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=RunConfig(name=t.experiment_name, storage_path=cfg.storage_path,
                             **progress_settings(cfg, callbacks, SearchReporter.for_config(cfg),
                                                StallWatchdog.for_config(cfg, t.experiment_name))),
    )


def _summarise(cfg: Config, folder: str, results: Any, print_fn: Callable[[str], Any]) -> tuple[SearchResult, Config]:
    """The table of trials (printed), the best trial and its config (written beside the experiment);
    every trial failed: an error."""
    rows = []
    for r in sorted(results, key=lambda r: r.path or ""):
        base = os.path.basename(r.path or "?")
        trial_id = (r.metrics or {}).get("trial_id") or (base.split("_")[1] if "_" in base else "?")
        df = r.metrics_dataframe
        history = df.to_dict("records") if df is not None and len(df) else ([r.metrics] if r.metrics else [])
        rows.append(trial_row(trial_id, overrides_of(r.config or {}), history, cfg.tune.metric, cfg.tune.mode,
                              cfg.train.epochs, error=r.error is not None))
        rows[-1]["params"] = {k: v for k, v in (r.config or {}).items() if "." not in k}   # Optuna's raw suggestions
        if is_multi(cfg):
            rows[-1]["values"] = row_values(cfg, history)
    best = best_row(rows, cfg.tune.mode)
    out = SearchResult(folder, rows, best["trial"] if best else None)
    print_fn(out.table())
    if best is None:
        from ..data.manifest import DataError
        from ..prechecks import storage_failure

        for err in results.errors:             # every trial failed: a full / read-only storage path says so
            msg = storage_failure(err, "train.storage_path", cfg.storage_path)
            if msg:
                raise DataError(f"every trial failed: {msg}")
        raise ExperimentFailed(f"no trial of {cfg.tune.experiment_name!r} reported {cfg.tune.metric} with a checkpoint; "
                               f"see the trials' error.txt under {folder}")
    best_cfg = best_config(cfg, best)
    out.best_config_path = write_best_config(cfg, best_cfg, best, folder)
    print_fn(f"best trial {best['trial']}: {cfg.tune.metric} = {best['objective']:.4f}; config: {out.best_config_path}")
    return out, best_cfg
