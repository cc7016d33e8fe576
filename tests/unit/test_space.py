"""The define-by-run search space: conditionality, valid grids/weights, config errors (no Ray)."""

from __future__ import annotations

import optuna
import pytest

from bidpm.config import ConfigError, load_config
from bidpm.tune.space import apply_to, define_by_run, free_grid, overrides_of, sample_overrides

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
        trial_cfg = apply_to(cfg, ov)
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
