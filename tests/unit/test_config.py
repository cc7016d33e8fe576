"""Config: every YAML under configs/ validates; each rule fails with a message naming the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bidpm.config import Config, ConfigError, config_from_dict, load_config, paper_step_weights

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_configs_folder_is_not_empty():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "brats_t1t2.yaml", "synthrad_brain.yaml", "synthrad_pelvis.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates_and_round_trips(path: Path):
    cfg = load_config(path)
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    # a header comment tells the user how to launch it (torchtune-style)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#"), f"{path.name}: first line should be a comment with the launch command"
    text = path.read_text()
    assert "python jobs/" in text or "python benchmarks/" in text or "make quickstart" in text


def test_paper_weights_default_resolved():
    cfg = load_config(None, ["method.time_grid=[0,0.25,0.5,1]"])
    assert cfg.method.step_weights == [1.0, 0.5, 0.5, 1.0]
    assert paper_step_weights(1) == [1.0, 1.0]


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.lr=1e-3", "train.use_gpu=true", "data.image_size=[64,48]", "name=x"])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.use_gpu is True
    assert cfg.data.image_size == [64, 48]
    assert cfg.name == "x"


@pytest.mark.parametrize(
    "override, field, words",
    [
        ("method.time_grid=[0,0.6,0.4,1]", "method.time_grid", "strictly increasing"),
        ("method.time_grid=[0.1,1]", "method.time_grid", "start at 0"),
        ("method.time_grid=[0,0.9]", "method.time_grid", "end at 1"),
        ("method.time_grid=[0]", "method.time_grid", "at least two"),
        ("method.step_weights=[1,1,1]", "method.step_weights", "entries"),
        ("method.step_weights=[0,0]", "method.step_weights", "not all 0"),
        ("method.step_weights=[1,-1]", "method.step_weights", ">= 0"),
        ("method.lambda_unpaired=-0.1", "method.lambda_unpaired", "greater than or equal"),
        ("data.pairing_ratio=0", "data.pairing_ratio", "greater than 0"),
        ("data.pairing_ratio=1.5", "data.pairing_ratio", "less than or equal"),
        ("method.mmd_kernel=gauss", "method.mmd_kernel", "rbf"),
        ("method.paired_distance=ssim", "method.paired_distance", "lpips"),
        ("data.image_size=[34,32]", "data.image_size", "divisible by 2^depth"),
        ("model.attention_levels=[7]", "model.attention_levels", "does not exist"),
        ("train.epochs=0", "train.epochs", "greater than or equal"),
        ("model.chanels=3", "model.chanels", "unknown key"),
    ],
)
def test_errors_name_field_and_rule(override: str, field: str, words: str):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert field in msg, msg
    assert words in msg, msg


def test_missing_file_and_bad_override_are_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_tracking_uri_env_read_once_at_load(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert load_config(None).mlflow_uri == "http://127.0.0.1:5999"
    assert load_config(None, ["tracking.tracking_uri=sqlite:///x.db"]).mlflow_uri == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    assert cfg.mlflow_uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_flat_keeps_lists_readable():
    flat = Config().flat()
    assert flat["method.time_grid"] == [0.0, 1.0]
    assert flat["train.lr"] == pytest.approx(1e-4)


def test_default_failure_settings_retry_a_lost_worker_and_zero_stays_available():
    """Issue 13 item 1: the shipped default survives a killed Train worker / lost node (restarts from the
    last checkpoint); 0 (fail at the first loss) and -1 (forever) remain choices."""
    from bidpm.config.train import DEFAULT_MAX_FAILURES
    from bidpm.train.launch import build_run_config

    assert Config().train.max_failures == DEFAULT_MAX_FAILURES >= 1
    assert build_run_config(Config()).failure_config.max_failures == DEFAULT_MAX_FAILURES
    for v in (0, -1):
        assert build_run_config(load_config(None, [f"train.max_failures={v}"])).failure_config.max_failures == v
    with pytest.raises(ConfigError, match="train.max_failures"):
        load_config(None, ["train.max_failures=-2"])


def test_resources_per_worker_reach_the_scaling_config_and_gpu_implies_use_gpu():
    """Issue 14: a custom slot per Train worker (fake nodes), or {GPU: 1} on real GPU nodes, same field."""
    from bidpm.train.launch import build_scaling_config

    sc = build_scaling_config(load_config(None, ["train.resources_per_worker={accelerator_slot: 1}"]))
    assert sc.resources_per_worker == {"CPU": 0.5, "accelerator_slot": 1.0} and not sc.use_gpu
    gpu = load_config(None, ["train.resources_per_worker={GPU: 1, CPU: 4}"])
    assert gpu.train.use_gpu and (gpu.train.gpus_per_worker, gpu.train.cpus_per_worker) == (1.0, 4.0)
    sc = build_scaling_config(gpu)
    assert sc.use_gpu and sc.resources_per_worker == {"CPU": 4.0, "GPU": 1.0}
    assert config_from_dict(yaml.safe_load(gpu.to_yaml())) == gpu                       # round trip
    assert gpu.train.custom_resources() == {} and Config().train.worker_resources() == {"CPU": 0.5}
    for bad, words in ((["train.resources_per_worker={GPU: 1}", "train.use_gpu=false"], "use_gpu=false"),
                       (["train.resources_per_worker={GPU: 1}", "train.gpus_per_worker=0.5"], "disagree"),
                       (["train.resources_per_worker={CPU: 2}", "train.cpus_per_worker=1"], "disagree"),
                       (["train.resources_per_worker={slot: -1}"], "amounts >= 0")):
        with pytest.raises(ConfigError, match=words):
            load_config(None, bad)


def test_storage_uri_with_credentials_is_refused():
    """Credentials come from the environment, never a config value (it is logged and checkpointed)."""
    for uri in ("s3://KEY:SECRET@bucket/ray", "s3://bucket/ray?region=eu-west-1&secret_key=SECRET"):
        with pytest.raises(ConfigError, match="train.storage_path: .*AWS_ACCESS_KEY_ID"):
            load_config(None, [f"train.storage_path={uri}"])
    ok = "s3://bucket/ray?region=eu-west-1&endpoint_override=minio:9000"
    assert load_config(None, [f"train.storage_path={ok}"]).storage_path == ok


def test_failure_settings_reach_ray_trains_failure_config():
    # Ray Train's default retries a worker group that does not start forever; the setting must reach it.
    from bidpm.train.launch import build_run_config

    fc = build_run_config(load_config(None, ["train.max_failures=2", "train.controller_failure_limit=3"])).failure_config
    assert (fc.max_failures, fc.controller_failure_limit) == (2, 3)
    assert build_run_config(load_config(None, [])).failure_config.controller_failure_limit == -1
    with pytest.raises(ConfigError, match="controller_failure_limit"):
        load_config(None, ["train.controller_failure_limit=-2"])


@pytest.mark.parametrize("override", ["tune.experiment_name=..", "train.run_name=../..", "study.name=.", "study.name=a/b",
                                      "tracking.experiment_name=it's", "tracking.registered_model_name=m`x", "train.run_name=a\\b"])
def test_names_that_become_folders_or_mlflow_filters_are_refused(override):
    """Issue 22 (low): ``..`` as a folder name deleted a parent on resume=false / --restart; a ``'``
    broke MLflow filter strings."""
    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(field)}.*not a safe name"):
        load_config(None, [override])


def test_usual_names_still_load():
    cfg = load_config(None, ["tune.experiment_name=brats_t1t2-steps", "train.run_name=rf.v2", "study.name=Study_01",
                             "tracking.experiment_name=/Users/me@example.org/bidpm", "train.run_name=BraTS T1 to T2"])
    assert cfg.tune.experiment_name == "brats_t1t2-steps" and cfg.study.name == "Study_01"
    assert cfg.tracking.experiment_name.startswith("/Users/") and cfg.train.run_name == "BraTS T1 to T2"  # older configs load
