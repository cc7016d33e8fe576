"""Provenance of runs: the code commit, the Ray job, the dataset (manifest digest) and the config as params."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Mapping

from mlflow import MlflowClient

from ..config import Config
from ..data.manifest import manifest_digest

REPO_DIR = Path(__file__).resolve().parents[3]


def git_commit(cfg: Config) -> str:
    """The commit tagged on runs: ``tracking.git_commit`` when set, else HEAD of the checkout this
    package runs from, else 'unknown' (a ``ray job submit`` upload excludes .git: pass
    ``tracking.git_commit=$(git rev-parse HEAD)`` there)."""
    if cfg.tracking.git_commit:
        return cfg.tracking.git_commit
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(REPO_DIR), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def ray_job_id() -> str:
    """The Ray job this driver belongs to ('none' outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_job_id() if ray.is_initialized() else "none"
    except Exception:  # noqa: BLE001 - provenance only
        return "none"


def log_dataset(client: MlflowClient, run_id: str, cfg: Config, manifest: Mapping[str, Any], context: str = "train") -> None:
    """Dataset lineage: the shard folder as an MLflow dataset input, digest = the manifest's."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    source = resolve_dataset_source(cfg.shards_path)
    ds = MetaDataset(source=source, name=f"{cfg.data.layout}:{cfg.data.source_modality}->{cfg.data.target_modality}",
                     digest=manifest_digest(manifest)[:36])
    client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])])


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_param_value(x) for x in v) + "]"
    return str(v)


def config_params(cfg: Config) -> dict[str, str]:
    """Flattened resolved config as MLflow params; lists stay readable (``[0.0, 0.5, 1.0]``).

    ``Config.flat`` is a dump, so the pseudonym salt and explicit subject lists (raw ids) are not in
    it - only their digests (``data.salt_digest``, ``data.split.subjects_digest``), for lineage."""
    params = {k: _param_value(v) for k, v in cfg.flat().items()}
    params["method.n_steps"] = str(cfg.method.n_steps)
    return params
