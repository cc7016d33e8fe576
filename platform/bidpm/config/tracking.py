"""MLflow settings (``tracking:`` section)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import Section


class TrackingConfig(Section):
    """Where runs go and how the registry is moved.

    ``tracking_uri`` unset: ``MLFLOW_TRACKING_URI`` when set (read once, at config load), else a SQLite
    file ``mlflow.db`` in ``output_dir``.
    """

    enabled: bool = True
    tracking_uri: Optional[str] = None
    experiment_name: str = "bidpm"
    registered_model_name: str = "bidpm"
    promote_metric: str = Field("test/ssim_mean", description="higher is better unless promote_mode is min")
    promote_mode: Literal["max", "min"] = "max"
