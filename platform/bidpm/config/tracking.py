"""MLflow settings (``tracking:`` section)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import Section


class TrackingConfig(Section):
    """Where runs go and how the registry is moved.

    ``tracking_uri`` unset: ``MLFLOW_TRACKING_URI`` when set (read once, at config load), else a SQLite
    file ``mlflow.db`` in ``output_dir``. Promotion compares ``promote_metric`` on the TEST split
    (both directions), which is never used for model selection, scored as ``evaluation:`` says.
    """

    enabled: bool = True
    tracking_uri: Optional[str] = None
    experiment_name: str = "bidpm"
    registered_model_name: str = "bidpm"
    register_best: bool = Field(True, description="log + register the best trial's model and run the promotion")
    promote_metric: str = Field("test/ssim_mean", description="higher is better unless promote_mode is min")
    promote_mode: Literal["max", "min"] = "max"
    log_checkpoints: bool = Field(True, description="each trial's best checkpoint as a run artifact")
    git_commit: Optional[str] = Field(
        None,
        description="commit tagged on runs (bidpm.git_commit); None: `git rev-parse HEAD` of the checkout at the "
                    "driver, 'unknown' where there is none (`ray job submit` uploads no .git: pass "
                    "tracking.git_commit=$(git rev-parse HEAD))",
    )
    connect_timeout_s: float = Field(10.0, gt=0.0, description="fail-fast reachability check of an HTTP tracking server")
