"""The define-by-run search space: conditionality, valid grids/weights, config errors; plus the pure
driver helpers around it (checkpoint locations, per-trial config, the Ray runtime env). No Ray."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pyarrow.fs as pafs
import pytest

from bidpm.config import ConfigError, load_config, with_overrides
from bidpm.io import checkpoints
from bidpm.io.checkpoints import checkpoint_location, local_checkpoint
from bidpm.search.space import define_by_run, free_grid, overrides_of, sample_overrides, trial_config, warp_grid
from bidpm.timegrid import check_grid

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cfg(*overrides: str):
    return load_config(None, ["model.base_channels=8", "model.groups=4", *overrides])


def _draws(cfg, n: int = 60, seed: int = 0):
    """Run a real (random-sampler) study with the space; return [(params, overrides)]."""
    fn = define_by_run(cfg)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        ov = fn(trial)
        out.append((dict(trial.params), ov))
        study.tell(trial, 0.0)
    return out


def _check_grid(grid, weights, min_gap):
    assert grid[0] == 0.0 and grid[-1] == 1.0
    assert all(b - a >= min_gap - 1e-9 for a, b in zip(grid, grid[1:]))
    assert len(weights) == len(grid)                      # w_0..w_N
    assert weights[0] == weights[-1] > 0


@pytest.mark.parametrize("placement", ["free", "warp", "uniform"])
def test_grids_are_strictly_increasing_from_0_to_1(placement):
    cfg = _cfg(f"tune.space.grid_placement={placement}", "tune.space.n_steps=[1,2,3,4]")
    seen_n = set()
    for params, ov in _draws(cfg):
        grid, w = ov["method.time_grid"], ov["method.step_weights"]
        n = params["n_steps"]
        seen_n.add(n)
        assert len(grid) == n + 1
        _check_grid(grid, w, cfg.tune.space.min_gap)
        if placement == "uniform":
            assert grid == pytest.approx([i / n for i in range(n + 1)])
        if placement == "warp" and n > 1:
            g = params["warp_gamma"]
            assert grid == pytest.approx([(i / n) ** g for i in range(n + 1)], abs=1e-6)
        if placement == "free" and n > 1:
            raw = sorted(params[f"t_{i}_of_{n}"] for i in range(1, n))
            # sorted suggestions are the interior points unless two were closer than min_gap
            if all(b - a >= cfg.tune.space.min_gap for a, b in zip([0.0, *raw], [*raw, 1.0])):
                assert grid[1:-1] == pytest.approx(raw, abs=1e-6)
        # every resolved override validates as a real Config
        trial_cfg = with_overrides(cfg, ov)
        assert trial_cfg.method.time_grid == grid
        assert trial_cfg.method.n_steps == n
    assert seen_n == {1, 2, 3, 4}


def test_interior_weight_only_for_n_above_one_and_paper_values_reachable():
    cfg = _cfg("tune.space.n_steps=[1,2]", "tune.space.interior_weight=[0.5,0.5]")
    for params, ov in _draws(cfg, 20):
        assert "interior_weight" not in params                 # constant: never suggested
        n = params["n_steps"]
        assert ov["method.step_weights"] == ([1.0, 1.0] if n == 1 else [1.0, 0.5, 1.0])   # paper 3.2
    cfg = _cfg("tune.space.n_steps=[1,3]")
    for params, ov in _draws(cfg, 30):
        w = ov["method.step_weights"]
        if params["n_steps"] == 1:
            assert "interior_weight" not in params
        else:
            assert w[1:-1] == [pytest.approx(params["interior_weight"], abs=1e-6)] * 2


def test_no_lambda_or_kernel_when_everything_is_paired():
    cfg = _cfg("data.pairing_ratio=1.0")
    for params, ov in _draws(cfg, 25):
        assert not {"lambda_unpaired", "mmd_kernel", "mmd_bandwidth_scale"} & set(params)
        assert ov["method.lambda_unpaired"] == 0.0
        assert "method.mmd_kernel" not in ov


def test_lambda_and_kernel_searched_when_some_rows_are_unpaired():
    cfg = _cfg("data.pairing_ratio=0.1", "tune.space.lambda_unpaired=[0.01,2.0]")
    kernels = set()
    for params, ov in _draws(cfg, 40):
        lam = ov["method.lambda_unpaired"]
        assert 0.01 <= lam <= 2.0 and lam == params["lambda_unpaired"]
        kernels.add(ov["method.mmd_kernel"])
        assert 0.5 <= ov["method.mmd_bandwidth_scale"] <= 2.0
    assert kernels == {"rbf", "imq", "laplacian"}


def test_optional_lr_and_paired_distance():
    cfg = _cfg()
    assert {"train.lr", "method.paired_distance"}.isdisjoint(_draws(cfg, 3)[0][1])
    cfg = _cfg("tune.space.lr=[1e-4,1e-2]", "tune.space.paired_distances=[l2,l1]")
    for _, ov in _draws(cfg, 10):
        assert 1e-4 <= ov["train.lr"] <= 1e-2
        assert ov["method.paired_distance"] in ("l2", "l1")


def test_fixed_trial_gives_exact_overrides():
    """An independent hand-computed reference: N=3, free points 0.7 and 0.2 -> sorted grid."""
    cfg = _cfg("data.pairing_ratio=0.5", "tune.space.end_weight=[0.5,2]")
    trial = optuna.trial.FixedTrial({
        "n_steps": 3, "t_1_of_3": 0.7, "t_2_of_3": 0.2, "end_weight": 2.0, "interior_weight": 0.25,
        "lambda_unpaired": 0.3, "mmd_kernel": "imq", "mmd_bandwidth_scale": 1.5,
    })
    ov = sample_overrides(trial, cfg.tune.space, cfg.data.pairing_ratio)
    assert ov == {
        "method.time_grid": [0.0, 0.2, 0.7, 1.0], "method.step_weights": [2.0, 0.25, 0.25, 2.0],
        "method.lambda_unpaired": 0.3, "method.mmd_kernel": "imq", "method.mmd_bandwidth_scale": 1.5,
    }
    assert overrides_of({**trial.params, **ov}) == ov


def test_free_grid_pushes_close_points_apart():
    assert free_grid([0.5, 0.5], 0.1) == pytest.approx([0.0, 0.5, 0.6, 1.0])
    assert free_grid([0.99, 0.98], 0.1) == pytest.approx([0.0, 0.8, 0.9, 1.0])
    assert free_grid([0.0], 0.05) == pytest.approx([0.0, 0.05, 1.0])


def test_seeded_tpe_is_reproducible():
    cfg = _cfg()
    a = [ov for _, ov in _draws(cfg, 8, seed=3)]
    b = [ov for _, ov in _draws(cfg, 8, seed=3)]
    assert a == b


@pytest.mark.parametrize(
    "override, field",
    [
        ("tune.space.n_stepz=[1,2]", "tune.space.n_stepz"),              # unknown key
        ("tune.space.end_weight=[2.0,1.0]", "tune.space.end_weight"),    # low > high
        ("tune.space.interior_weight=[0.1]", "tune.space.interior_weight"),
        ("tune.space.lambda_unpaired=[0.0,1.0]", "tune.space.lambda_unpaired"),  # log-uniform needs > 0
        ("tune.space.n_steps=[0,1]", "tune.space.n_steps"),
        ("tune.space.n_steps=[]", "tune.space.n_steps"),
        ("tune.space.mmd_kernels=[gaussian]", "tune.space.mmd_kernels"),
        ("tune.space.grid_placement=random", "tune.space.grid_placement"),
        ("tune.space.min_gap=0.3", "tune.space.min_gap"),                # 4 steps x 0.3 > 1
        ("tune.metricc=x", "tune.metricc"),
    ],
)
def test_bad_search_space_names_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        _cfg(override)
    assert field in str(err.value)


@pytest.mark.parametrize("n, gamma", [(4, 30.0), (4, 60.0), (2, 200.0), (4, 0.01), (3, 1e-4)])
def test_extreme_warp_stays_a_valid_grid(n, gamma):
    """(1/N)^gamma underflows the 6-decimal rounding for a large gamma (t_1 -> 0.0 = t_0) and
    crowds 1 for a tiny one; the warp grid is clipped into [min_gap, 1 - min_gap], kept increasing."""
    min_gap = 0.02
    plain = [0.0] + [round((i / n) ** gamma, 6) for i in range(1, n)] + [1.0]
    assert any(b - a < min_gap for a, b in zip(plain, plain[1:]))            # the unguarded grid breaks the gap
    if gamma > 1:
        with pytest.raises(ValueError):                                      # ... and for a large gamma, check_grid
            check_grid(plain, "plain warp")
    grid = warp_grid(n, gamma, min_gap)
    check_grid(grid, "warp")
    _check_grid(grid, [1.0] * (n + 1), min_gap)
    assert min_gap <= grid[1] and grid[-2] <= 1 - min_gap + 1e-9


def test_moderate_warp_is_the_plain_power_law():
    assert warp_grid(4, 2.0, 0.02) == pytest.approx([0.0, 0.0625, 0.25, 0.5625, 1.0])
    assert warp_grid(3, 0.5, 0.02) == pytest.approx([0.0, 3 ** -0.5, (2 / 3) ** 0.5, 1.0], abs=1e-6)


def test_warp_sampled_with_a_huge_gamma_range_validates():
    cfg = _cfg("tune.space.grid_placement=warp", "tune.space.warp_gamma=[20,80]", "tune.space.n_steps=[4]")
    for _, ov in _draws(cfg, 10):
        assert with_overrides(cfg, ov).method.time_grid == ov["method.time_grid"]


def test_trial_config_ranks_checkpoints_by_the_study_metric():
    """Retention must keep the epoch Tune calls best, so train.checkpoint_score follows tune.metric."""
    cfg = _cfg("train.checkpoint_score=val/psnr_mean", "train.checkpoint_score_mode=max",
               "tune.metric=val/mae_mean", "tune.mode=min")
    t = trial_config(cfg, {"method.time_grid": [0.0, 0.5, 1.0], "method.step_weights": [1.0, 0.5, 1.0]})
    assert (t.train.checkpoint_score, t.train.checkpoint_score_mode) == ("val/mae_mean", "min")
    assert t.method.time_grid == [0.0, 0.5, 1.0]
    assert cfg.train.checkpoint_score == "val/psnr_mean"                     # the study config is untouched


@pytest.mark.parametrize("path, storage, expected", [
    # Ray Train reports filesystem-relative paths for object stores: the scheme comes back
    ("bucket/runs/exp/train_runs/t1/checkpoint_000001", "s3://bucket/runs",
     "s3://bucket/runs/exp/train_runs/t1/checkpoint_000001"),
    ("bkt/a/checkpoint_000002", "gs://bkt/a", "gs://bkt/a/checkpoint_000002"),
    ("bucket/x/ck", "s3://bucket/x?region=eu-west-1", "s3://bucket/x/ck?region=eu-west-1"),
    # already a URI, or local storage: unchanged
    ("s3://bucket/x/ck", "s3://bucket/x", "s3://bucket/x/ck"),
    ("/data/runs/ck", "/data/runs", "/data/runs/ck"),
    ("/data/runs/ck", "file:///data/runs", "/data/runs/ck"),
])
def test_checkpoint_location_restores_the_storage_scheme(path, storage, expected):
    assert checkpoint_location(path, storage) == expected


def test_local_checkpoint_local_folder_is_used_in_place(tmp_path):
    ck = tmp_path / "checkpoint_000001"
    ck.mkdir()
    (ck / "state.pt").write_bytes(b"x")
    with local_checkpoint(str(ck)) as folder:
        assert folder == ck
    assert ck.is_dir()
    with pytest.raises(FileNotFoundError, match="checkpoint_000009.*retention"):
        with local_checkpoint(str(tmp_path / "checkpoint_000009")):
            pass


def test_local_checkpoint_downloads_a_remote_folder(tmp_path, monkeypatch):
    """A non-local filesystem (a SubTree over a folder stands in for S3) is copied to a temp folder,
    recursively, and the copy is gone after the block."""
    remote = tmp_path / "bucket"
    (remote / "runs" / "ck" / "sub").mkdir(parents=True)
    (remote / "runs" / "ck" / "state.pt").write_bytes(b"weights")
    (remote / "runs" / "ck" / "sub" / "grid.png").write_bytes(b"png")
    fake = pafs.SubTreeFileSystem(str(remote), pafs.LocalFileSystem())
    monkeypatch.setattr(checkpoints.storage, "resolve",
                        lambda loc: (fake, loc.removeprefix("s3://bucket/")))
    with local_checkpoint("s3://bucket/runs/ck") as folder:
        assert folder.name == "ck" and not str(folder).startswith(str(remote))
        assert (folder / "state.pt").read_bytes() == b"weights"
        assert (folder / "sub" / "grid.png").read_bytes() == b"png"
    assert not folder.exists()


def test_driver_runtime_env_avoids_a_second_py_modules():
    """Inside `ray job submit` whose runtime env ships py_modules, ray.init must get none (Ray refuses
    to merge the same field); elsewhere the driver ships the package itself."""
    from bidpm.raycluster.connect import JOB_CONFIG_ENV, PACKAGE_DIR, driver_runtime_env

    own = {"py_modules": [str(PACKAGE_DIR)]}
    assert Path(PACKAGE_DIR).name == "bidpm" and Path(PACKAGE_DIR, "raycluster", "connect.py").is_file()
    assert driver_runtime_env({}) == own
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_a.zip", "py_modules": ["gcs://_ray_pkg_b.zip"]}, "metadata": {}}
    assert driver_runtime_env({JOB_CONFIG_ENV: json.dumps(job)}) is None
    only_wd = {"runtime_env": {"working_dir": "gcs://_ray_pkg_a.zip"}, "metadata": {}}
    assert driver_runtime_env({JOB_CONFIG_ENV: json.dumps(only_wd)}) == own
