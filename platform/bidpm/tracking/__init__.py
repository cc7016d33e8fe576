"""MLflow, one module per concept: ``store`` (connect, health check, outages), ``provenance`` (commit,
Ray job, dataset lineage, config params), ``runs`` (parent and child runs, metrics), ``journal`` (what
an outage left unwritten), ``pyfunc`` (the logged model format: written and read), ``registry``
(register, aliases) and ``promotion`` (challenger vs champion).

Callers use ``from bidpm import tracking`` and the names below.
"""

import warnings

from .provenance import REPO_DIR, config_params, git_commit, log_dataset, ray_job_id

# MLflow warns at class definition that BidpmPyfunc.predict has no type hints (on purpose: MLflow reads them as
# a schema), from inside its own "once" filter, so no filter silences it: the warnings of this one import are
# recorded and dropped, so that a job's stderr holds its own messages (a user error is one line there).
with warnings.catch_warnings(record=True):
    from .pyfunc import MODEL_FORMAT, BidpmPyfunc, input_shape, load_model, log_model, model_signature
from .promotion import Promotion, decision_tags, promote, score_model
from .registry import CHALLENGER, CHAMPION, alias_version, check_registry, register
from .runs import (
    TAG_PARENT, TAG_ROLE, TAG_SCALE, TAG_STUDY, TAG_TRIAL, TAG_WEIGHTS, child_tags, end_open_children, end_study_runs,
    find_run, log_json,
    log_metrics, log_params, set_tags, study_run, trial_run,
)
from .store import (TrackingError, TrackingUnavailable, artifact_root, connect, is_outage, outage_in, unavailable,
                    use_store, where)

__all__ = [
    "BidpmPyfunc", "CHALLENGER", "CHAMPION", "MODEL_FORMAT", "Promotion", "REPO_DIR", "TAG_PARENT", "TAG_ROLE",
    "TAG_SCALE", "TAG_STUDY", "TAG_TRIAL", "TAG_WEIGHTS", "TrackingError", "TrackingUnavailable", "alias_version", "artifact_root",
    "check_registry", "child_tags", "config_params", "connect", "decision_tags", "end_open_children", "end_study_runs", "find_run",
    "is_outage", "outage_in", "unavailable", "git_commit", "input_shape", "load_model", "log_dataset", "log_json",
    "log_metrics", "log_model", "log_params", "model_signature", "promote", "ray_job_id", "register", "score_model",
    "set_tags", "study_run", "trial_run", "use_store", "where",
]
