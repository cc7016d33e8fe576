"""The multi-objective search's reports against independent references: the Pareto front (Optuna's
``best_trials`` on the rebuilt study) against a brute-force dominance filter, the parameter importance
on a synthetic study whose main objective depends on one parameter only, the warm-start replay, and
the scheduler choice under several objectives. No Ray cluster, no training."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest

from bidpm.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
MO = "tune.objectives=[{metric: val/ssim_mean, mode: max}, {metric: nfe, mode: min}]"


def _cfg(*extra: str):
    return load_config(REPO / "configs" / "quickstart.yaml", [MO, "tune.space.n_steps=[1,2,3,4]", *extra])


def _dominated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """b dominates a (maximise quality, minimise nfe): no worse in both, better in one."""
    return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        nfe = rng.choice([1, 2, 3, 4])
        q = round(rng.uniform(0.3, 0.9), 2)            # ties on purpose: two decimals
        rows.append({"trial": f"t{i}", "n_steps": nfe, "objective": q, "values": {"val/ssim_mean": q, "nfe": nfe},
                     "checkpoint_path": None if i % 7 == 3 else f"/ck/{i}", "val/fwd_ssim_mean": q, "val/bwd_ssim_mean": q,
                     "time_grid": [0.0, 1.0], "status": "finished"})
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_is_the_brute_force_non_dominated_set(seed, tmp_path):
    from bidpm.search.pareto import format_front, front_csv, front_rows, plot_front, plot_nfe

    cfg = _cfg()
    rows = _rows(25, seed)
    eligible = [r for r in rows if r["checkpoint_path"]]
    pts = {r["trial"]: (r["objective"], r["n_steps"]) for r in eligible}
    brute = {t for t, p in pts.items() if not any(_dominated(p, q) for u, q in pts.items() if u != t)}
    study, front = front_rows(cfg, rows)
    assert {r["trial"] for r in front} == brute
    assert [r["n_steps"] for r in front] == sorted(r["n_steps"] for r in front)      # ordered by NFE
    text = format_front(cfg, front)
    assert all(r["trial"] in text for r in front)
    lines = front_csv(cfg, front).decode().splitlines()
    assert lines[0].startswith("trial,N,grid,val/ssim_mean,nfe") and len(lines) == len(front) + 1
    for p in (plot_front(cfg, study, tmp_path / "f.png"), plot_nfe(rows, front, tmp_path / "n.png")):
        assert p.read_bytes()[:4] == b"\x89PNG"


def _drawn_rows(cfg, n: int, seed: int, quality) -> list[dict]:
    """``n`` trial rows drawn at random from the real search space, main objective ``quality(params)``."""
    from bidpm.search.space import sample_overrides

    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rows = []
    for i in range(n):
        t = draw.ask()
        sample_overrides(t, cfg.tune.space, cfg.data.pairing_ratio)
        q, k = quality(t.params), int(t.params.get("n_steps", cfg.tune.space.n_steps[0]))
        rows.append({"trial": f"t{i}", "params": t.params, "n_steps": k, "objective": q,
                     "values": {"val/ssim_mean": q, "nfe": k}, "checkpoint_path": "x"})
    return rows


def test_importance_ranks_the_only_parameter_that_matters_first(tmp_path):
    """Trials drawn from the real search space (replayed through it); the main objective depends on the
    interior weight only."""
    from bidpm.search.importance import format_importances, importances, plot_views
    from bidpm.search.optuna_study import rows_study

    cfg = _cfg("tune.space.n_steps=[2]", "tune.space.grid_placement=free")
    rows = _drawn_rows(cfg, 40, 3, lambda p: 1.0 - (p["interior_weight"] - 0.4) ** 2)
    study = rows_study(cfg, rows)
    assert len(study.trials) == 40 and set(study.trials[0].params) == set(rows[0]["params"])
    imp, why = importances(cfg, study)
    assert why is None and len(imp) >= 4
    assert next(iter(imp)) == "interior_weight" and imp["interior_weight"] > 0.5
    assert "interior_weight" in format_importances(cfg, imp).splitlines()[3]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plot_views(cfg, study, tmp_path))


def test_importance_within_each_n_ranks_the_parameter_that_matters_at_that_n():
    """N in {1, 2, 3} through the real space: at N = 2 only t_1 matters, at N = 3 only the interior weight.
    Over all trials those parameters do not exist everywhere, so only the per-N ranking can find them."""
    from bidpm.search.importance import format_importances, importances, importances_by_n
    from bidpm.search.optuna_study import rows_study

    cfg = _cfg("tune.space.n_steps=[1,2,3]", "tune.space.grid_placement=free")
    rows = _drawn_rows(cfg, 90, 5, lambda p: {1: 0.5, 2: 0.8 - (p.get("t_1_of_2", 0) - 0.3) ** 2,
                                              3: 0.6 + 0.3 * p.get("interior_weight", 0)}[p["n_steps"]])
    study = rows_study(cfg, rows)
    by_n = importances_by_n(cfg, study)
    assert set(by_n) == {2, 3}                                   # N = 1 has no parameter of its own
    assert next(iter(by_n[2])) == "t_1_of_2" and next(iter(by_n[3])) == "interior_weight"
    overall, _ = importances(cfg, study)
    assert "t_1_of_2" not in overall and "interior_weight" not in overall
    text = format_importances(cfg, overall, by_n)
    assert "N = 2" in text and "N = 3" in text and "all trials" in text


def test_importance_declines_without_trials():
    from bidpm.search.importance import importances

    cfg = _cfg()
    empty = optuna.create_study(directions=["maximize", "minimize"])
    assert importances(cfg, empty)[0] == {}


def test_replay_keeps_what_the_space_asks_for_and_stops_at_a_new_parameter():
    from bidpm.search.optuna_study import replay

    cfg = _cfg("tune.space.n_steps=[1,2]")
    params, dists = replay(cfg, {"n_steps": 2, "t_1_of_2": 0.3, "interior_weight": 0.5, "end_weight": 1.0,
                                 "lambda_unpaired": 0.1, "mmd_kernel": "imq", "mmd_bandwidth_scale": 1.0, "gone": 1})
    assert "gone" not in params and set(params) == set(dists) and params["mmd_kernel"] == "imq"
    widened = _cfg("tune.space.n_steps=[1,2]", "tune.space.lr=[1e-4,1e-2]")
    p2, _ = replay(widened, params)
    assert p2 == params                                  # lr is new: the replay stops there, nothing invented
    out_of_range, _ = replay(_cfg("tune.space.n_steps=[1,2]", "tune.space.interior_weight=[0.6,0.9]"), params)
    assert "interior_weight" not in out_of_range


def test_multi_objective_disables_asha_and_single_objective_keeps_it():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from bidpm.search.objectives import make_sampler, objective_pairs, scheduler_for, scheduler_note

    single = load_config(REPO / "configs" / "quickstart.yaml")
    assert isinstance(scheduler_for(single), ASHAScheduler) and scheduler_note(single) is None
    multi = _cfg()
    assert isinstance(scheduler_for(multi), FIFOScheduler) and "ASHA" in scheduler_note(multi)
    assert objective_pairs(multi) == [("val/ssim_mean", "max"), ("nfe", "min")]
    assert isinstance(make_sampler(multi), optuna.samplers.TPESampler)
    assert isinstance(make_sampler(_cfg("tune.mo_sampler=nsga2")), optuna.samplers.NSGAIISampler)


def test_objectives_config_is_validated():
    cfg = _cfg()
    assert (cfg.tune.metric, cfg.tune.mode) == ("val/ssim_mean", "max")
    psnr = load_config(REPO / "configs" / "quickstart.yaml",
                       ["tune.objectives=[{metric: val/psnr_mean}, {metric: nfe, mode: min}]"])
    assert psnr.tune.metric == "val/psnr_mean"            # tune.metric follows the main objective
    for bad in (["tune.objectives=[{metric: nfe, mode: min}]"],
                ["tune.objectives=[{metric: nfe}, {metric: nfe, mode: min}]"],
                [MO, "tune.mode=min"]):
        with pytest.raises(ConfigError):
            load_config(REPO / "configs" / "quickstart.yaml", bad)
