"""The smallest configs that still run every part for real (importable: tests/ is on sys.path).

A 16 px phantom, a two-level UNet of 8 channels, one step per epoch: what the fault, outage and
registry tests need to exercise Ray, Tune and MLflow without spending minutes on training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from bidpm.model import EMA, build_velocity_field
from bidpm.train.checkpoint import save_checkpoint


TINY_MODEL = {"kind": "unet", "base_channels": 8, "channel_mults": [1, 2], "groups": 4, "attention_levels": []}
TINY_MODEL_OVERRIDES = ["model.base_channels=8", "model.channel_mults=[1,2]", "model.groups=4", "model.attention_levels=[]"]


def tiny_study(name: str, epochs: int = 1, sections: Optional[dict[str, dict[str, Any]]] = None,
               **tracking: Any) -> dict[str, Any]:
    """A one-trial search config (a fresh dict each call): experiment ``name``, Tune experiment ``name-tune``,
    a fixed cluster (``tune.autoscaling: false``: a test's trial that cannot get its resources stops). ``sections``:
    keys merged into each named section (``{"train": {"epochs": 4}}``); ``tracking``: into ``tracking``."""
    raw = {
        "name": name,
        "model": dict(TINY_MODEL),
        "method": {"name": "bidpm", "paired_distance": "l2"},
        "data": {"layout": "phantom", "image_size": [16, 16], "num_slices": 4,
                 "phantom": {"num_subjects": 6, "shape": [24, 24, 8]}, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
        "train": {"num_workers": 1, "cpus_per_worker": 0.5, "epochs": epochs, "batch_size": 4, "max_steps_per_epoch": 1,
                  "val_batches": 1},
        "tune": {"experiment_name": f"{name}-tune", "num_samples": 1, "space": {"n_steps": [1]}, "autoscaling": False},
        "tracking": {"experiment_name": name, "register_best": False, "log_checkpoints": False, **tracking},
    }
    for section, values in (sections or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a tiny model and registry name ``tiny`` under ``tmp_path`` (tracking/registry tests)."""
    return [f"output_dir={tmp_path}", *TINY_MODEL_OVERRIDES,
            "data.image_size=[16,16]", "method.paired_distance=l2", "method.time_grid=[0,0.4,1]",
            "tracking.registered_model_name=tiny", "tracking.experiment_name=t", *extra]


def tiny_checkpoint(cfg: Any, path: Path, seed: int = 0) -> Path:
    """A checkpoint of a randomly perturbed model of ``cfg`` (a fresh UNet may output exactly 0)."""
    torch.manual_seed(seed)
    model = build_velocity_field(cfg.model, tuple(cfg.data.image_size))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return save_checkpoint(path, model=model, ema=EMA(model, decay=0.9), optimizer=opt, step=1, epoch=1, cfg=cfg,
                           manifest_digest="d")


def tiny_search(out: Path) -> dict[str, Any]:
    """A two-trial search that registers its best model (Tune + Optuna + ASHA -> MLflow -> registry), under ``out``."""
    raw = tiny_study("tiny", epochs=2, sections={
        "train": {"max_steps_per_epoch": 2, "lr": 1.0e-3},
        "tune": {"num_samples": 2, "space": {"n_steps": [1, 2]}},
        "evaluation": {"max_batches": 1}}, registered_model_name="tiny-model", register_best=True, log_checkpoints=True)
    return {**raw, "output_dir": str(out)}


def check_store(cfg: Any, n_trials: int) -> None:
    """The MLflow store holds the search's parent run, ``n_trials`` nested trial runs with per-epoch metrics,
    and the registered version with both aliases; the registry holds the checkpoint the best trial logged."""
    from mlflow import MlflowClient

    from bidpm import tracking

    client = MlflowClient(cfg.mlflow_uri, cfg.mlflow_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("bidpm.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("bidpm.role") == "trial"]
    assert len(parents) == 1 and len(trials) == n_trials
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    for r in trials:
        assert r.data.params["method.time_grid"].startswith("[0.0, ")
        hist = client.get_metric_history(r.info.run_id, cfg.tune.metric)
        assert [m.step for m in hist] == list(range(1, len(hist) + 1)) and hist     # one point per epoch
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config", "best_checkpoint"} <= arts
        assert r.data.tags["bidpm.manifest_digest"] != "unknown"
        assert r.inputs.dataset_inputs
    name = cfg.tracking.registered_model_name
    v = parent.data.tags["bidpm.registered_version"]
    assert tracking.alias_version(client, name, "challenger") == v
    assert tracking.alias_version(client, name, "champion") == v                  # first version: no champion yet
    mv = client.get_model_version(name, v)
    assert mv.tags["bidpm.promotion.decision"] == "promoted"
    assert 0.0 < float(mv.tags["bidpm.test/ssim_mean"]) <= 1.0
    assert "evaluation.scale=unit" in mv.tags["bidpm.metric_scale"] and "bidpm.metric_scale" in parent.data.tags
    # one Objective: the checkpoint the best trial's run logged is the one the registry holds
    best_run = next(r for r in trials if r.data.tags[tracking.TAG_TRIAL] == parent.data.tags["bidpm.best_trial"])
    assert mv.tags["bidpm.checkpoint"] == best_run.data.tags["bidpm.best_checkpoint"] != "None"
    assert {"summary"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
