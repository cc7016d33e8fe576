"""Runs: a study's parent run and one nested child run per trial, found again on resume; metrics and params.

Layout in the tracking store (experiment ``cfg.tracking.experiment_name``): one parent run per study
(tag ``bidpm.study``); one nested child run per Tune trial (tags ``mlflow.parentRunId``,
``bidpm.trial_id``), holding the flattened resolved config as params, per-epoch metrics, the resolved
config YAML, the sample grid and the trial's best checkpoint.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping, Optional

import numpy as np
from mlflow import MlflowClient

from ..config import Config
from ..evaluation import scale_note
from .provenance import config_params

TAG_STUDY, TAG_ROLE, TAG_TRIAL = "bidpm.study", "bidpm.role", "bidpm.trial_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_SCALE = "bidpm.metric_scale"
TAG_WEIGHTS = "bidpm.checkpoint_sha256"   # the sha256 of the weights a run scored or a model holds


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """MLflow takes at most 100 params per call; params are immutable, and re-logging the same value (a
    resumed run) is allowed, so no lookup of what is there."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int,
                timestamp_ms: Optional[int] = None) -> None:
    """Log numeric entries only (Tune results carry strings and dicts too). ``timestamp_ms``: when the
    record was made (a journaled write keeps its own, so that a SQL store, whose key is (key, timestamp,
    step, value), takes a replay of a write it already committed as the same record); default now."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    items = [
        Metric(k, float(v), now, int(step))
        for k, v in metrics.items()
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)
    ]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])


def find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> Optional[str]:
    """The newest run carrying all ``tags`` (used to resume the same parent/child runs)."""
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=filt, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def study_run(client: MlflowClient, experiment_id: str, cfg: Config, extra_tags: Mapping[str, str],
              name: Optional[str] = None) -> tuple[str, bool]:
    """Find (resume) or create the parent run of experiment ``name`` (default ``cfg.tune.experiment_name``).
    Returns (run_id, resumed)."""
    name = name or cfg.tune.experiment_name
    key = {TAG_STUDY: name, TAG_ROLE: "study"}
    run_id = find_run(client, experiment_id, key)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(experiment_id, run_name=name,
                            tags={**key, TAG_SCALE: scale_note(cfg.evaluation.scale), **extra_tags})
    log_params(client, run.info.run_id, config_params(cfg))
    client.log_text(run.info.run_id, cfg.to_yaml(), "config/study.yaml")
    return run.info.run_id, False


def trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, study: str, trial_id: str,
              trial_name: str, cfg: Config, extra_tags: Mapping[str, str]) -> str:
    """Find or create the nested child run of one trial; logs params and the resolved config once."""
    key = {TAG_STUDY: study, TAG_ROLE: "trial", TAG_TRIAL: trial_id}
    run_id = find_run(client, experiment_id, key)
    if run_id is None:
        run = client.create_run(experiment_id, run_name=trial_name, tags={**key, TAG_PARENT: parent_run_id,
                                                                         TAG_SCALE: scale_note(cfg.evaluation.scale), **extra_tags})
        run_id = run.info.run_id
        log_params(client, run_id, config_params(cfg))
        client.log_text(run_id, cfg.to_yaml(), "config/resolved.yaml")
    else:
        client.update_run(run_id, status="RUNNING")
        # the same values again (the trial's config is pickled with the study): completes a run whose driver
        # died between creating it and logging them (a tracking outage, a kill)
        log_params(client, run_id, config_params(cfg))
        client.log_text(run_id, cfg.to_yaml(), "config/resolved.yaml")
    return run_id


def log_json(client: MlflowClient, run_id: str, obj: Any, artifact_file: str) -> None:
    client.log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))


def end_open_children(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str,
                      by_trial: Optional[Mapping[str, str]] = None) -> list[str]:
    """End the child runs of ``parent_run_id`` still RUNNING: ``by_trial[trial id or run name]`` when
    given, else ``status``. Why: a driver that stops (error, Ctrl+C, a killed predecessor) never got
    Tune's on_trial_complete/error for the trials it was running. Returns the ended run ids."""
    filt = f"tags.`{TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    ended = []
    by = by_trial or {}
    for r in client.search_runs([experiment_id], filter_string=filt, max_results=5000):
        st = by.get(r.data.tags.get(TAG_TRIAL, ""), by.get(r.info.run_name or "", status))
        client.set_terminated(r.info.run_id, status=st)
        ended.append(r.info.run_id)
    return ended


def child_tags(client: MlflowClient, experiment_id: str, parent_run_id: str, key: str) -> dict[str, str]:
    """{run name: value of tag ``key``} of the child runs of ``parent_run_id`` that carry it."""
    filt = f"tags.`{TAG_PARENT}` = '{parent_run_id}'"
    return {r.info.run_name: r.data.tags[key] for r in client.search_runs([experiment_id], filter_string=filt, max_results=5000)
            if key in r.data.tags and r.info.run_name}


def end_study_runs(client: MlflowClient, parent_run_id: str, status: str) -> None:
    """A study that stops: its open trial runs and its parent run end with ``status`` (FAILED / KILLED).
    The rerun of the same command takes them over again (``study_run`` / ``trial_run`` set RUNNING)."""
    info = client.get_run(parent_run_id).info
    end_open_children(client, info.experiment_id, parent_run_id, status)
    if info.status == "RUNNING":                              # a finished study keeps its status
        client.set_terminated(parent_run_id, status=status)
