"""Run a study: Ray Tune + OptunaSearch (TPE, seeded) + ASHA, one Ray Train run per trial.

Ray 2.60 (Train V2): ``Tuner(trainer)`` is gone, so each trial is a Tune *function* trainable that
builds and fits its own ``TorchTrainer`` (``bidpm.train.run_training``) with
``ray.tune.integration.ray_train.TuneReportCallback`` forwarding the workers' per-epoch reports to
Tune. The trial function only coordinates, so ``tune.with_resources`` gives it a small CPU share
(``tune.trial_cpus``); its Train workers reserve their own CPUs/GPUs (``train.*``).

Resume: the experiment lives in ``<storage_path>/<tune.experiment_name>``. Rerunning with the same
name restores it (``Tuner.restore``: searcher + scheduler state, finished trials kept, unfinished
ones continued from their Train checkpoints). When the whole study (including registration) has
finished, its ``study.json`` exists and the study is reported, not rerun. ``study.json`` and
``best_config.yaml`` go through ``bidpm.data.storage`` (written atomically), so a study on an object
store (``s3://``, ``gs://``) is recognised as finished too.

Checkpoints: each trial's Train run ranks its checkpoints for retention by ``tune.metric`` (see
``space.trial_config``), so the epoch Tune calls best still has its checkpoint; the driver rebuilds
its object-store URI and downloads it before MLflow logs it (``checkpoints``).

Faults: what can be checked is checked before any MLflow run is opened (a trial larger than the
cluster, too few rows for one step); after that every exit path ends the study's MLflow runs - FINISHED,
FAILED (an error), KILLED (Ctrl+C, SIGTERM, a stalled study) - except during a tracking outage, when
the rerun takes the runs over. A stalled study (``watchdog``) and an outage stop with exit 75 and the
command that resumes; Ctrl+C (Tune's graceful stop) is not mistaken for a finished study.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ray import tune
from ray.tune import RunConfig, TuneConfig, Tuner
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from .. import tracking
from ..config import Config, config_from_dict
from ..data import storage
from ..data.manifest import manifest_digest
from .callback import JOURNAL_FILE, MLflowTrialCallback, replay_journal
from .checkpoints import checkpoint_location, local_checkpoint
from .progress import progress_settings
from .space import apply_to, define_by_run, overrides_of, trial_config
from .summary import best_row, format_table, plot_summary, trial_row
from .watchdog import StallWatchdog, StudyStalled, check_fits, trial_request

STUDY_FILE = "study.json"
BEST_CONFIG_FILE = "best_config.yaml"


@dataclass
class StudyResult:
    """What a study produced (also written to ``<experiment dir>/study.json``)."""

    experiment_dir: str
    rows: list[dict[str, Any]]
    best_trial: Optional[str]
    best_config_path: Optional[str]
    parent_run_id: Optional[str]
    model_version: Optional[str]
    promotion: Optional[dict[str, Any]]
    reused: bool = False                 # True: a finished study was reported, nothing ran

    def table(self) -> str:
        return format_table(self.rows, self.best_trial)


class StudyFailed(RuntimeError):
    """The study ran but produced nothing usable (every trial failed); the message says where the errors are."""


class StudyInterrupted(KeyboardInterrupt):
    """Tune stopped on a signal (Ctrl+C, SIGUSR1) with trials unfinished; its state is saved for the rerun."""


def interrupted(results: Any, expected: int) -> bool:
    """Did ``tuner.fit`` return with trials unfinished (Tune's graceful stop on a signal)?"""
    return results.num_terminated + results.num_errors < max(len(results), expected)


def end_runs(client: Any, parent: Optional[str], exc: BaseException, print_fn=print) -> None:
    """A study that stops on ``exc``: end its open MLflow runs (KILLED for signals and stalls, else
    FAILED). Not during a tracking outage (the server cannot be told; the rerun takes the runs over),
    and never masking ``exc``."""
    if client is None or parent is None:
        return
    if isinstance(exc, tracking.TrackingUnavailable) or tracking.is_outage(exc):
        print_fn(f"note: MLflow run {parent} of this study stays RUNNING until the rerun takes it over")
        return
    status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit, StudyStalled)) else "FAILED"
    try:
        tracking.end_study_runs(client, parent, status)
    except Exception as end_exc:  # noqa: BLE001 - the original error is what the user needs
        print_fn(f"note: could not mark MLflow run {parent} {status} ({str(end_exc).splitlines()[0][:200]}); "
                 f"the rerun takes it over")


def checked_datasets(cfg: Config) -> dict[str, Any]:
    """``build_datasets`` + the step-count check, once in the driver before any MLflow run: every trial
    would fail on them. Their ValueErrors (no paired row at this ratio, too few rows per worker for one
    step) are the user's to fix, so they come out as ConfigError (one line, exit 2)."""
    from ..config import ConfigError
    from ..train import build_datasets
    from ..train.launch import _check_steps

    try:
        datasets = build_datasets(cfg)
        _check_steps(cfg, datasets)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
    return datasets


def watchdog_for(cfg: Config, study: str, run_name: str = "trial") -> StallWatchdog:
    """The stall watchdog of a study of ``cfg`` (``tune.stall_timeout_s`` / ``report_timeout_s`` / ``autoscaling``)."""
    t = cfg.tune
    return StallWatchdog(study, trial_request(cfg), t.stall_timeout_s, t.report_timeout_s, t.autoscaling, run_name=run_name)


def experiment_dir(cfg: Config) -> str:
    return cfg.storage_path.rstrip("/") + "/" + cfg.tune.experiment_name


def _trial(config: dict[str, Any], base_cfg: dict[str, Any], datasets: Optional[dict[str, Any]]) -> None:
    """One trial: the study config + this trial's overrides -> one Ray Train run (resumable by name)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train import run_training

    cfg = trial_config(config_from_dict(base_cfg, origin="study config"), overrides_of(config))
    trial_id = tune.get_context().get_trial_id()
    run_training(cfg, callbacks=[TuneReportCallback()], resume=True, name=f"train_{trial_id}",
                 storage_path=experiment_dir(cfg) + "/train_runs", datasets=datasets)


def trial_name(trial: Any) -> str:
    """Short trial names/folders (Tune's default puts the whole config in the folder name)."""
    return f"trial_{trial.trial_id}"


def _scheduler(cfg: Config):
    if cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs, grace_period=min(cfg.tune.asha_grace_period, cfg.train.epochs),
                         reduction_factor=cfg.tune.asha_reduction_factor)


def _searcher(cfg: Config):
    """TPE (seeded) over the define-by-run space; TuneConfig.max_concurrent_trials limits concurrency."""
    return OptunaSearch(define_by_run(cfg), metric=cfg.tune.metric, mode=cfg.tune.mode, seed=cfg.tune.seed,
                        study_name=cfg.tune.experiment_name)


def _rows(results: Any, cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(results, key=lambda r: r.path or ""):
        trial_id = os.path.basename(r.path or "?").split("_")[1] if r.path and "_" in os.path.basename(r.path) else "?"
        df = r.metrics_dataframe
        history = df.to_dict("records") if df is not None and len(df) else ([r.metrics] if r.metrics else [])
        if r.metrics and r.metrics.get("trial_id"):
            trial_id = r.metrics["trial_id"]
        rows.append(trial_row(trial_id, overrides_of(r.config or {}), history, cfg.tune.metric, cfg.tune.mode,
                              cfg.train.epochs, error=r.error is not None))
    return rows


def load_finished(cfg: Config) -> Optional[StudyResult]:
    """The finished study's record, or None when it has not finished (or never ran). Local or URI."""
    loc = storage.join(experiment_dir(cfg), STUDY_FILE)
    if not storage.is_file(loc):
        return None
    d = json.loads(storage.read_bytes(loc))
    return StudyResult(**{**d, "reused": True})


def _write_text(location: str, text: str) -> None:
    """Atomic write (temp name + rename) to a local path or an object-store URI."""
    if not storage.is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    storage.write_bytes_atomic(location, text.encode())


def run_study(cfg: Config, *, print_fn=print) -> StudyResult:
    """The whole study: fail-fast checks, Tune, MLflow runs, best config, registry promotion.

    Needs a connected Ray; builds the shards on first use (``prepare_shards``, idempotent). Order:
    tracking store reachable and registry name compatible, a trial fits the cluster (before any trial);
    finished study -> report and return; datasets and their step count (before any MLflow run); then
    the parent run and the trials. Every exit after the parent run opens ends it (``end_runs``).
    """
    client = exp_id = None
    if cfg.tracking.enabled:
        client, exp_id = tracking.connect(cfg)
        if cfg.tracking.register_best:
            tracking.check_registry(client, cfg)
    check_fits(cfg)                                 # on a fixed cluster Ray Train would wait for it forever
    from ..data.manifest import load_manifest
    from ..data.shards import prepare_shards

    prepare_shards(cfg)
    manifest = load_manifest(cfg)
    exp_dir = experiment_dir(cfg)

    if cfg.tune.resume:
        done = load_finished(cfg)
        if done is not None:
            print_fn(f"study {cfg.tune.experiment_name!r} already finished ({exp_dir}); reporting it, nothing rerun "
                     f"(choose a new tune.experiment_name or set tune.resume=false to run again)")
            return done
    elif storage.exists(exp_dir):
        print_fn(f"tune.resume=false: deleting the previous study folder {exp_dir}")
        storage.remove_tree(exp_dir)

    datasets = checked_datasets(cfg)                # one read (materialised) shared by every trial
    parent = None
    try:
        callbacks: list[Any] = []
        if client is not None:
            tags = {"bidpm.git_commit": tracking.git_commit(cfg), "bidpm.ray_job_id": tracking.ray_job_id(),
                    "bidpm.manifest_digest": manifest_digest(manifest)}
            if not cfg.tune.resume:
                prior = tracking.find_run(client, exp_id, {tracking.TAG_STUDY: cfg.tune.experiment_name, tracking.TAG_ROLE: "study"})
                if prior:
                    client.set_tag(prior, tracking.TAG_STUDY, cfg.tune.experiment_name + "@replaced")
                    tracking.end_study_runs(client, prior, "KILLED")      # replaced: nothing will resume it
            parent, resumed = tracking.study_run(client, exp_id, cfg, tags)
            if not resumed:
                tracking.log_dataset(client, parent, cfg, manifest)
            journal = storage.join(exp_dir, JOURNAL_FILE)
            replay_journal(client, journal, cfg, print_fn)           # what an outage left unwritten, first
            callbacks.append(MLflowTrialCallback(cfg.to_dict(), exp_id, parent, tags, manifest, journal=journal))
        out, best_cfg, best = _fit(cfg, exp_dir, datasets, callbacks, print_fn)
        out.parent_run_id = parent
        if client is not None:
            # a trial whose end the callback never recorded (its driver died first) is ended as Tune saw it
            tracking.end_open_children(client, exp_id, parent, "KILLED",
                                       {r["trial"]: "FAILED" if r["status"] == "error" else "FINISHED" for r in out.rows})
            _track_study(client, cfg, best_cfg, parent, out.rows, best, out, print_fn)
        _write_text(storage.join(exp_dir, STUDY_FILE),
                    json.dumps({k: v for k, v in out.__dict__.items() if k != "reused"}, indent=1, default=str))
        return out
    except BaseException as exc:
        outage = tracking.outage_in(exc)        # Tune may wrap the callback's outage in a TuneError
        end_runs(client, parent, outage or exc, print_fn)
        if outage is not None and outage is not exc:
            raise outage from None
        if not isinstance(exc, tracking.TrackingUnavailable) and tracking.is_outage(exc):
            raise tracking.unavailable(cfg, exc, "the summary / registry step") from exc
        raise


def _fit(cfg: Config, exp_dir: str, datasets: Any, callbacks: list[Any], print_fn) -> tuple[StudyResult, Config, dict[str, Any]]:
    """Tune (new or restored), the table of trials, the best trial and its config file.
    Returns (result, best trial's config, best row)."""
    trainable = tune.with_resources(tune.with_parameters(_trial, base_cfg=cfg.to_dict(), datasets=datasets),
                                    {"cpu": cfg.tune.trial_cpus})
    if cfg.tune.resume and Tuner.can_restore(exp_dir):
        # RunConfig (callbacks, watchdog, reporter) comes back from the experiment's pickle
        print_fn(f"restoring study {cfg.tune.experiment_name!r} from {exp_dir}: finished trials kept, unfinished resumed")
        tuner = Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, search_alg=_searcher(cfg),
                                   scheduler=_scheduler(cfg), num_samples=cfg.tune.num_samples,
                                   max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                   trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=RunConfig(name=cfg.tune.experiment_name, storage_path=cfg.storage_path,
                                 **progress_settings(cfg, callbacks, watchdog=watchdog_for(cfg, cfg.tune.experiment_name))),
        )
    results = tuner.fit()
    if interrupted(results, cfg.tune.num_samples):
        raise StudyInterrupted(f"study {cfg.tune.experiment_name!r} stopped with trials unfinished (state saved in {exp_dir})")

    rows = _rows(results, cfg)
    best = best_row(rows, cfg.tune.mode)
    out = StudyResult(exp_dir, rows, best["trial"] if best else None, None, None, None, None)
    print_fn(out.table())
    if best is None:
        from ..data.manifest import DataError
        from ..prechecks import storage_failure

        for err in results.errors:             # every trial failed: a full / read-only storage path says so
            msg = storage_failure(err, "train.storage_path", cfg.storage_path)
            if msg:
                raise DataError(f"every trial failed: {msg}")
        raise StudyFailed(f"no trial of {cfg.tune.experiment_name!r} reported {cfg.tune.metric} with a checkpoint; "
                          f"see the trials' error.txt under {exp_dir}")
    best_cfg = apply_to(cfg, best["overrides"])
    best_cfg.train.run_name = f"{cfg.tune.experiment_name}-best"
    path = storage.join(exp_dir, BEST_CONFIG_FILE)
    retrain = (f"python jobs/train.py --config {path}" if not storage.is_uri(path)
               else f"copy it to a local file, then python jobs/train.py --config {BEST_CONFIG_FILE}")
    _write_text(path, f"# best trial {best['trial']} of study {cfg.tune.experiment_name} "
                      f"({cfg.tune.metric} = {best['objective']:.4f})\n# retrain: {retrain}\n" + best_cfg.to_yaml())
    out.best_config_path = path
    print_fn(f"best trial {best['trial']}: {cfg.tune.metric} = {best['objective']:.4f}; config: {path}")
    return out, best_cfg, best


def _track_study(client: Any, cfg: Config, best_cfg: Config, parent: str, rows: list[dict[str, Any]],
                 best: dict[str, Any], out: StudyResult, print_fn) -> None:
    """Parent-run summary (table, plot, best config) and the registry step for the best trial."""
    import tempfile

    client.log_text(parent, out.table(), "summary/trials.txt")
    tracking.log_json(client, parent, rows, "summary/trials.json")
    client.log_text(parent, best_cfg.to_yaml(), "summary/best_config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(parent, str(plot_summary(rows, cfg.tune.metric, cfg.tune.mode, Path(tmp) / "summary.png")), "summary")
    tracking.set_tags(client, parent, {"bidpm.best_trial": best["trial"], "bidpm.best_objective": f"{best['objective']:.6f}"})
    best_run = tracking.find_run(client, client.get_run(parent).info.experiment_id,
                                 {tracking.TAG_STUDY: cfg.tune.experiment_name, tracking.TAG_TRIAL: best["trial"]})
    if cfg.tracking.register_best:
        run_id = best_run or parent
        location = checkpoint_location(best["checkpoint_path"], cfg.storage_path)   # Tune drops s3:// / gs://
        with local_checkpoint(location) as folder:                                  # downloaded when remote
            model_uri = tracking.log_model(best_cfg, run_id, str(folder))
        scores = tracking.score_model(model_uri, best_cfg, "test")             # test split: never used to select
        tracking.log_metrics(client, parent, scores, step=0)
        version = tracking.register(client, best_cfg, model_uri, run_id,
                                    {"bidpm.study": cfg.tune.experiment_name, "bidpm.trial_id": best["trial"],
                                     "bidpm.checkpoint": best["checkpoint_path"],   # = the trial run's bidpm.best_checkpoint
                                     "bidpm.git_commit": tracking.git_commit(cfg)})
        decision = tracking.promote(client, best_cfg, version, challenger_scores=scores)
        tracking.set_tags(client, parent, {"bidpm.registered_version": version, **tracking.decision_tags(decision)})
        out.model_version, out.promotion = version, decision.__dict__
        print_fn(decision.describe())
    client.set_terminated(parent, status="FINISHED")
