"""A tiny study end to end on the shared local Ray: Tune + Optuna + ASHA -> MLflow (SQLite) -> registry.

16 px phantoms, base_channels 8, 1 worker, 2 epochs of 2 steps, 2 trials: minutes on 2 cores.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from bidpm import tracking
from bidpm.config import load_config

pytestmark = pytest.mark.integration

TINY = {
    "name": "tiny",
    "model": {"kind": "unet", "base_channels": 8, "channel_mults": [1, 2], "groups": 4},
    "method": {"name": "bidpm", "paired_distance": "l2"},
    "data": {"layout": "phantom", "image_size": [16, 16], "num_slices": 4,
             "phantom": {"num_subjects": 6, "shape": [24, 24, 8]}, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
    "train": {"num_workers": 1, "cpus_per_worker": 0.5, "epochs": 2, "batch_size": 4, "max_steps_per_epoch": 2,
              "val_batches": 1, "lr": 1.0e-3},
    "tune": {"experiment_name": "tiny-tune", "num_samples": 2, "space": {"n_steps": [1, 2]}},
    "tracking": {"experiment_name": "tiny", "registered_model_name": "tiny-model"},
    "evaluation": {"max_batches": 1},
}


def write_tiny(tmp_path: Path, out: Path) -> Path:
    """The tiny study as a YAML file (also used by the `ray job submit` test)."""
    raw = {**TINY, "output_dir": str(out)}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.fixture(autouse=True)
def _own_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_store(cfg, n_trials: int) -> None:
    """The MLflow store holds the parent run, n nested trial runs with per-epoch metrics, and the
    registered version with both aliases (shared with the job-submit test)."""
    from mlflow import MlflowClient

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


def test_study_tracks_registers_and_resumes(tmp_path, ray_session, capsys):
    from bidpm.data.shards import prepare_shards
    from bidpm.search.run import run_search

    cfg = load_config(write_tiny(tmp_path, tmp_path / "out"))
    prepare_shards(cfg)
    res = run_search(cfg)
    assert not res.reused and len(res.rows) == 2
    assert all(r["status"] in ("finished", "stopped") for r in res.rows)
    assert any(r["status"] == "finished" for r in res.rows)
    check_store(cfg, 2)
    # the best config is a valid train config with the best trial's grid and weights
    best = next(r for r in res.rows if r["trial"] == res.best_trial)
    best_cfg = load_config(res.best_config_path)
    assert best_cfg.method.time_grid == best["time_grid"] and best_cfg.method.step_weights == best["step_weights"]
    table = capsys.readouterr().out
    assert "fwd SSIM" in table and res.best_trial + "*" in table

    # rerun: finished study is reported, nothing runs, nothing new in MLflow
    trial_dirs = sorted(p.name for p in Path(res.experiment_dir).glob("trial_*"))
    again = run_search(cfg)
    assert again.reused and again.rows == res.rows and again.model_version == res.model_version
    assert sorted(p.name for p in Path(res.experiment_dir).glob("trial_*")) == trial_dirs
    assert "already finished" in capsys.readouterr().out
    check_store(cfg, 2)


def test_unreachable_tracking_fails_before_any_trial(tmp_path, ray_session):
    from bidpm.search.run import run_search
    from bidpm.tune.names import experiment_dir

    cfg = load_config(write_tiny(tmp_path, tmp_path / "out"), [f"tracking.tracking_uri=http://127.0.0.1:{_free_port()}"])
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        run_search(cfg)
    assert not Path(experiment_dir(cfg, cfg.tune.experiment_name)).exists()


def test_finished_study_is_recognised_on_uri_storage(tmp_path):
    """study.json goes through bidpm.io.storage: a study stored under a URI (file:// stands in for
    s3:// / gs://, same pyarrow path) is read back as finished; no Ray needed."""
    from bidpm.io.storage import write_bytes_atomic
    from bidpm.search.run import STUDY_FILE, load_finished
    from bidpm.tune.names import experiment_dir

    cfg = load_config(write_tiny(tmp_path, tmp_path / "out"), [f"train.storage_path={(tmp_path / 'store').as_uri()}"])
    folder = experiment_dir(cfg, cfg.tune.experiment_name)
    assert folder.startswith("file://") and load_finished(cfg) is None
    (tmp_path / "store" / cfg.tune.experiment_name).mkdir(parents=True)
    record = {"experiment_dir": folder, "rows": [{"trial": "a1", "objective": 0.5}], "best_trial": "a1",
              "best_config_path": None, "parent_run_id": None, "model_version": "3", "promotion": None}
    write_bytes_atomic(folder + "/" + STUDY_FILE, json.dumps(record).encode())
    done = load_finished(cfg)
    assert done is not None and done.reused and done.model_version == "3" and done.rows == record["rows"]
    assert [p.name for p in (tmp_path / "store" / cfg.tune.experiment_name).iterdir()] == [STUDY_FILE]  # no temp left
