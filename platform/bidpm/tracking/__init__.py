"""MLflow, one module per concept: ``store`` (connect, health check), ``provenance`` (commit, Ray job,
dataset lineage, config params), ``runs`` (study parent run, trial child runs, metrics), ``pyfunc``
(the logged model) and ``registry`` (register, aliases, challenger vs champion promotion).

Callers use ``from bidpm import tracking`` and the names below.
"""

from .provenance import REPO_DIR, config_params, git_commit, log_dataset, ray_job_id
from .pyfunc import MODEL_FORMAT, BidpmPyfunc, input_shape, log_model, model_signature
from .registry import (
    CHALLENGER, CHAMPION, Promotion, alias_version, check_registry, decision_tags, promote, register, score_model,
)
from .runs import (
    TAG_PARENT, TAG_ROLE, TAG_SCALE, TAG_STUDY, TAG_TRIAL, find_run, log_json, log_metrics, log_params, set_tags,
    study_run, trial_run,
)
from .store import TrackingError, artifact_root, connect, use_store, where

__all__ = [
    "BidpmPyfunc", "CHALLENGER", "CHAMPION", "MODEL_FORMAT", "Promotion", "REPO_DIR", "TAG_PARENT", "TAG_ROLE",
    "TAG_SCALE", "TAG_STUDY", "TAG_TRIAL", "TrackingError", "alias_version", "artifact_root", "check_registry",
    "config_params", "connect", "decision_tags", "find_run", "git_commit", "input_shape", "log_dataset", "log_json",
    "log_metrics", "log_model", "log_params", "model_signature", "promote", "ray_job_id", "register", "score_model",
    "set_tags", "study_run", "trial_run", "use_store", "where",
]
