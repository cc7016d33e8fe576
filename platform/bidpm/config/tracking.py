"""MLflow settings (``tracking:`` section)."""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator

from .base import MlflowName, Section

# Stores MLflow's client reaches: a tracking server, a database (SQLAlchemy URL) or a local SQLite
# file. ``file:`` and bare paths (MLflow's deprecated file store) and other schemes (``ftp://``) are refused
# at load, before any work: they used to fail only when the first run was created, with a traceback.
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
URI_HINT = ("use http(s)://HOST:PORT for a tracking server, sqlite:////ABS/PATH/mlflow.db for a local file, "
            "postgresql://... / mysql://... / mssql://... for a database, or leave tracking.tracking_uri unset for "
            "<output_dir>/mlflow.db")


def has_password(uri: str) -> bool:
    """Does ``uri`` carry ``user:password@`` (a user name alone is no secret)?"""
    return re.match(r"^[^/]*//[^/@:]+:[^/@]*@", uri) is not None


def check_tracking_uri(uri: str) -> str:
    """``uri`` if MLflow can use it as this platform's store, else ValueError naming the fix."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if m is None:
        if uri == "databricks" or uri.startswith("databricks://"):
            return uri
        raise ValueError(f"{uri!r} is a bare path, not a URI (MLflow's file store is not supported); {URI_HINT}")
    scheme = m.group(1).lower()
    if has_password(uri):                           # user:password@host: a credential in a config value
        raise ValueError(f"{scheme}://<redacted>@...: credentials in the tracking URI would be written into MLflow params, "
                         f"resolved configs, checkpoints and Tune's experiment state; remove them and pass them through "
                         f"the environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for a server, the "
                         f"database's own variables, e.g. PGPASSWORD or ~/.pgpass, for a database URI)")
    if scheme in ("http", "https", "databricks") or scheme.split("+")[0] in _DB_SCHEMES:
        if scheme == "sqlite" and not uri.startswith("sqlite:///"):
            raise ValueError(f"{uri!r}: a SQLite URI has three slashes before the path (sqlite:///relative.db, "
                             f"sqlite:////abs/path.db)")
        if scheme in ("http", "https") and not uri.split("://", 1)[1].strip("/"):
            raise ValueError(f"{uri!r}: no host; e.g. http://127.0.0.1:5000")
        return uri
    raise ValueError(f"{uri!r}: scheme {scheme}:// is not a tracking store; {URI_HINT}")


class TrackingConfig(Section):
    """Where runs go and how the registry is moved.

    ``tracking_uri`` unset: ``MLFLOW_TRACKING_URI`` when set (read once, at config load), else a SQLite
    file ``mlflow.db`` in ``output_dir``. Promotion compares ``promote_metric`` on the TEST split
    (both directions), which is never used for model selection, scored as ``evaluation:`` says.

    ``http_*``: how long MLflow's client keeps retrying a tracking server that stopped answering. The
    platform sets MLflow's ``MLFLOW_HTTP_REQUEST_*`` variables from these at connect (``tracking.store``);
    MLflow's own defaults (7 retries, exponential back-off, 120 s timeout) blocked a study ~4 minutes
    per call during an outage. With these defaults one call gives up after at most about
    ``(http_max_retries + 1) * http_timeout_s`` plus a few seconds of back-off, and the study stops
    with the command that resumes it (``bidpm.tune.mlflow``, ``bidpm.tracking.journal``).
    """

    enabled: bool = True
    tracking_uri: Optional[str] = None
    experiment_name: MlflowName = "bidpm"
    registered_model_name: MlflowName = "bidpm"
    register_best: bool = Field(True, description="log + register the best trial's model and run the promotion")
    promote_metric: str = Field("test/ssim_mean", description="higher is better unless promote_mode is min")
    promote_mode: Literal["max", "min"] = "max"
    log_checkpoints: bool = Field(True, description="each trial's best checkpoint as a run artifact")
    system_metrics: bool = Field(
        True, description="MLflow's system metrics (system/cpu_utilization_percentage, system/gpu_<i>_utilization_percentage, "
                          "memory, power) of rank 0's node on each trial's run, per epoch (bidpm.train.system)")
    system_metrics_interval_s: float = Field(
        10.0, gt=0.0, description="seconds between samples (MLflow's default sampling interval); each epoch's value "
                                  "is the mean of its samples plus one taken at its report")
    git_commit: Optional[str] = Field(
        None,
        description="commit tagged on runs (bidpm.git_commit); None: `git rev-parse HEAD` of the checkout at the "
                    "driver, 'unknown' where there is none (`ray job submit` uploads no .git: pass "
                    "tracking.git_commit=$(git rev-parse HEAD))",
    )
    connect_timeout_s: float = Field(10.0, gt=0.0, description="fail-fast reachability check of an HTTP tracking server")
    http_max_retries: int = Field(2, ge=0, le=10, description="retries of one MLflow HTTP request (MLFLOW_HTTP_REQUEST_MAX_RETRIES)")
    http_timeout_s: int = Field(10, ge=1, description="seconds one MLflow HTTP request may take (MLFLOW_HTTP_REQUEST_TIMEOUT)")
    http_backoff_factor: int = Field(
        1, ge=0, description="back-off between retries: factor * 2^(retry - 1) s (MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR)")

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None or v == "" else check_tracking_uri(v)
