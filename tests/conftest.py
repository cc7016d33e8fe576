"""Shared fixtures. Unit tests never start Ray; integration tests share one local Ray session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Tests never download: torch hub lookups stay inside a temp cache unless the caller set TORCH_HOME.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI into this process, and config loading reads it
    when a file sets no tracking_uri: without this, one test's store leaks into the next test's config
    (seen: the job-submit and synthesize tests read another test's SQLite file when run after the fault tests)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # not restored: whatever a test exported is its own


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (worker start-up is the expensive part)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",  # never attach to a head that `ray start` left running
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO / "platform")}},
        )
    yield ray
    ray.shutdown()
