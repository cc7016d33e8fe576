"""MLflow tracking against real stores: SQLite in tmp_path and an `mlflow server` over HTTP on loopback.

The registry/alias tests score versions with a stub evaluator (scores chosen per version), so the
promotion rule is checked exactly; the logged pyfunc itself is loaded and run at two batch sizes.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mlflow
from bidpm import tracking
from bidpm.config import load_config
from bidpm.method import build_method

from tiny import tiny_checkpoint, tiny_overrides  # tests/tiny.py

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _own_tracking_uri(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; undo it so each test's config is its own."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, tiny_overrides(tmp_path, *extra))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_logged_model_runs_any_batch_size_both_directions(tmp_path):
    cfg = _cfg(tmp_path)
    client, exp_id = tracking.connect(cfg)
    run = client.create_run(exp_id)
    uri = tracking.log_model(cfg, run.info.run_id, str(tiny_checkpoint(cfg, tmp_path / "ckpt")))
    loaded = mlflow.pyfunc.load_model(uri)
    # independent reference: the same checkpoint's EMA net through the method's Euler unroll
    from bidpm.train.checkpoint import load_checkpoint_model

    _, ema_model, _ = load_checkpoint_model(tmp_path / "ckpt")
    method = build_method(cfg.method)
    for b in (1, 4):                       # torch.export froze the batch dim; the pyfunc must not
        x = np.random.default_rng(b).uniform(-1, 1, (b, 1, 16, 16)).astype(np.float32)
        for d in ("forward", "backward"):
            y = loaded.predict(x, params={"direction": d})
            assert y.shape == x.shape and y.dtype == np.float32
            ref = method.sample(ema_model, torch.from_numpy(x), direction=d).numpy()
            np.testing.assert_allclose(y, ref, atol=1e-5)
    fwd = loaded.predict(x, params={"direction": "forward"})
    assert not np.allclose(fwd, loaded.predict(x, params={"direction": "backward"}))
    sig = loaded.metadata.signature
    assert sig.inputs.inputs[0].shape == (-1, 1, 16, 16)


def _register(client, cfg, tmp_path, seed):
    run = client.create_run(client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id)
    uri = tracking.log_model(cfg, run.info.run_id, str(tiny_checkpoint(cfg, tmp_path / f"ck{seed}", seed)))
    return tracking.register(client, cfg, uri, run.info.run_id, {"bidpm.seed": seed})


def test_registry_aliases_follow_the_promotion_rule(tmp_path):
    cfg = _cfg(tmp_path)
    client, _ = tracking.connect(cfg)
    name, metric = "tiny", cfg.tracking.promote_metric
    score = {"1": 0.50, "2": 0.40, "3": 0.50, "4": 0.60}      # v2 worse, v3 ties, v4 better
    evaluate = lambda uri: {metric: score[uri.rsplit("/", 1)[1]]}  # noqa: E731
    decisions = []
    for seed in range(1, 5):
        v = _register(client, cfg, tmp_path, seed)
        assert v == str(seed) and tracking.alias_version(client, name, "challenger") == v
        decisions.append(tracking.promote(client, cfg, v, evaluate=evaluate))
    assert [d.promoted for d in decisions] == [True, False, False, True]
    assert decisions[0].reason == "no champion yet"
    assert decisions[2].champion_score == decisions[2].challenger_score == 0.5   # a tie keeps the champion
    assert tracking.alias_version(client, name, "champion") == "4"
    tags = client.get_model_version(name, "2").tags
    assert tags["bidpm.promotion.decision"] == "kept_champion"
    assert float(tags["bidpm.promotion.champion_score"]) == 0.5 and float(tags["bidpm.promotion.challenger_score"]) == 0.4
    # min mode: lower wins
    cfg_min = _cfg(tmp_path, "tracking.promote_mode=min")
    assert tracking.promote(client, cfg_min, "2", evaluate=evaluate).promoted
    assert tracking.alias_version(client, name, "champion") == "2"


def test_incompatible_registered_name_fails_without_a_new_version(tmp_path):
    cfg = _cfg(tmp_path)
    client, exp_id = tracking.connect(cfg)
    client.create_registered_model("tiny", tags={"owner": "someone-else"})
    client.create_model_version("tiny", source=str(tmp_path), run_id=None)     # a foreign model
    with pytest.raises(tracking.TrackingError, match="tracking.registered_model_name.*does not hold bidpm models"):
        tracking.check_registry(client, cfg)
    run = client.create_run(exp_id)
    uri = tracking.log_model(cfg, run.info.run_id, str(tiny_checkpoint(cfg, tmp_path / "ck")))
    with pytest.raises(tracking.TrackingError):
        tracking.register(client, cfg, uri, run.info.run_id, {})
    assert len(client.search_model_versions("name = 'tiny'")) == 1              # nothing half-registered
    # other image size under a bidpm name
    cfg2 = _cfg(tmp_path, "tracking.registered_model_name=tiny2")
    _register(client, cfg2, tmp_path, 1)
    cfg3 = _cfg(tmp_path, "tracking.registered_model_name=tiny2", "data.image_size=[32,32]")
    with pytest.raises(tracking.TrackingError, match="1x16x16.*1x32x32"):
        tracking.check_registry(client, cfg3)


def test_failed_alias_step_deletes_the_version(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    client, exp_id = tracking.connect(cfg)
    run = client.create_run(exp_id)
    uri = tracking.log_model(cfg, run.info.run_id, str(tiny_checkpoint(cfg, tmp_path / "ck")))

    def boom(*a, **k):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(client, "set_registered_model_alias", boom)
    with pytest.raises(RuntimeError, match="went away"):
        tracking.register(client, cfg, uri, run.info.run_id, {})
    assert client.search_model_versions("name = 'tiny'") == []


def test_unreachable_server_fails_fast(tmp_path):
    cfg = _cfg(tmp_path, f"tracking.tracking_uri=http://127.0.0.1:{_free_port()}")
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingError, match="unreachable.*Nothing was run"):
        tracking.connect(cfg)
    assert time.monotonic() - t0 < 5


def test_params_are_readable_lists_and_runs_resume(tmp_path):
    cfg = _cfg(tmp_path)
    client, exp_id = tracking.connect(cfg)
    parent, resumed = tracking.study_run(client, exp_id, cfg, {"bidpm.git_commit": "abc"})
    assert not resumed
    child = tracking.trial_run(client, exp_id, parent, cfg.tune.experiment_name, "t1", "trial_1", cfg, {})
    run = client.get_run(child)
    assert run.data.params["method.time_grid"] == "[0.0, 0.4, 1.0]"
    assert run.data.params["method.step_weights"] == "[1.0, 0.5, 1.0]"
    assert run.data.tags["mlflow.parentRunId"] == parent
    tracking.log_metrics(client, child, {"val/ssim_mean": 0.3, "note": "x", "flag": True}, step=1)
    assert [m.value for m in client.get_metric_history(child, "val/ssim_mean")] == [0.3]
    # a second start finds the same runs (resume)
    assert tracking.study_run(client, exp_id, cfg, {}) == (parent, True)
    assert tracking.trial_run(client, exp_id, parent, cfg.tune.experiment_name, "t1", "trial_1", cfg, {}) == child


def test_http_server_registry_round_trip(tmp_path, mlflow_server_s3):
    """Over HTTP (the session's server; its artifacts in the session's S3 bucket, as cluster/kuberay deploys it)."""
    cfg = _cfg(tmp_path, f"tracking.tracking_uri={mlflow_server_s3}")
    client, _ = tracking.connect(cfg)
    v = _register(client, cfg, tmp_path, 1)
    d = tracking.promote(client, cfg, v, evaluate=lambda uri: {cfg.tracking.promote_metric: 0.7})
    assert d.promoted and tracking.alias_version(client, "tiny", "champion") == v
    loaded = mlflow.pyfunc.load_model("models:/tiny@champion")
    assert loaded.predict(np.zeros((3, 1, 16, 16), np.float32), params={"direction": "backward"}).shape == (3, 1, 16, 16)


def test_git_commit_from_config_else_the_checkout(tmp_path):
    """`ray job submit` uploads no .git, so the commit can come from the config; unset, the checkout's HEAD."""
    assert tracking.git_commit(_cfg(tmp_path, "tracking.git_commit=abc1234def")) == "abc1234def"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(Path(tracking.__file__).parent), capture_output=True, text=True)
    expected = head.stdout.strip() if head.returncode == 0 else "unknown"
    assert tracking.git_commit(_cfg(tmp_path)) == expected


def test_manifest_digest_is_the_content_digest_or_a_clear_error():
    from bidpm.data.manifest import DataError, manifest_digest

    assert manifest_digest({"content_digest": "f00d", "location": "/s/v1"}) == "f00d"
    with pytest.raises(DataError, match="/s/v1.*content_digest.*prepare_data.py"):
        manifest_digest({"location": "/s/v1", "digest": "x"})
