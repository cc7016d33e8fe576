"""bidpm.scaling.fit against closed forms, an exact bootstrap enumeration, and coverage on synthetic
studies with known E and alpha (issue 20)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bidpm.scaling.fit import PowerLaw, _resampled_means, bootstrap_fit, fit_power_law, holdout_check

SIZES = [4.0, 8.0, 16.0, 32.0, 64.0]
TRUE = PowerLaw(E=0.12, B=0.9, alpha=0.7)


def test_noiseless_data_recovers_the_law_and_the_subjects_needed():
    law = fit_power_law(np.array(SIZES), TRUE.err(np.array(SIZES)))
    assert law.E == pytest.approx(TRUE.E, rel=1e-3) and law.alpha == pytest.approx(TRUE.alpha, rel=1e-3)
    assert law.B == pytest.approx(TRUE.B, rel=1e-3)
    # closed form: E + B D^-a = t  <=>  D = (B / (t - E))^(1/a)
    t = 0.2
    assert TRUE.needed(t) == pytest.approx((0.9 / 0.08) ** (1 / 0.7)) and TRUE.err(TRUE.needed(t)) == pytest.approx(t)
    assert TRUE.needed(0.1) == float("inf")                       # below the floor: no amount of data


def test_the_batched_fit_reaches_scipys_huber_least_squares_minimum():
    """Independent reference: scipy.optimize.least_squares(loss="huber") on the same log residuals, from the
    same starts; the batched fitter's cost is never worse (to rounding) on noisy problems."""
    from scipy.optimize import least_squares

    from bidpm.scaling.fit import HUBER_DELTA, _huber_cost, _starts, fit_batch

    rng = np.random.default_rng(11)
    log_d = np.log(np.array(SIZES))
    for _ in range(5):
        err = TRUE.err(np.array(SIZES)) * np.exp(rng.normal(0, 0.05, len(SIZES)))
        starts = _starts(log_d, err)
        th, cost = fit_batch(log_d, np.repeat(np.log(err)[None, :], len(starts), axis=0), starts)
        ref = min((least_squares(lambda t: np.logaddexp(t[0], t[1] - t[2] * log_d) - np.log(err), x0, loss="huber",
                                 f_scale=HUBER_DELTA, bounds=([-30, -30, 0], [5, 30, 10])) for x0 in starts), key=lambda r: r.cost)
        ref_cost = float(_huber_cost(np.logaddexp(ref.x[0], ref.x[1] - ref.x[2] * log_d) - np.log(err)))
        assert cost.min() <= ref_cost * (1 + 1e-6) + 1e-12


def test_too_few_sizes_or_bad_errors_are_refused():
    with pytest.raises(ValueError, match="at least 3 distinct sizes"):
        fit_power_law(np.array([4.0, 8.0]), np.array([0.3, 0.2]))
    with pytest.raises(ValueError, match="> 0"):
        fit_power_law(np.array([4.0, 8.0, 16.0]), np.array([0.3, 0.0, 0.1]))


def test_the_bootstrap_matches_the_exact_enumeration_of_every_resample():
    """2 seeds x 3 subjects: all 2^2 * 3^3 = 108 equally likely resamples enumerated by hand; the Monte
    Carlo bootstrap's mean and variance of each size's mean agree with the exact ones."""
    rng = np.random.default_rng(3)
    values = [rng.uniform(0.1, 0.5, (2, 3)) for _ in range(3)]
    exact = np.array([[v[np.ix_(s, j)].mean() for v in values]
                      for s in itertools.product(range(2), repeat=2) for j in itertools.product(range(3), repeat=3)])
    mc = _resampled_means(values, np.random.default_rng(0), 20000)
    np.testing.assert_allclose(mc.mean(axis=0), exact.mean(axis=0), atol=2e-3)
    np.testing.assert_allclose(mc.var(axis=0), exact.var(axis=0), rtol=0.06)
    # one draw of seeds and subjects per resample, shared by every size: the sizes' means co-vary as exactly
    np.testing.assert_allclose(np.corrcoef(mc.T), np.corrcoef(exact.T), atol=0.03)


def _study(rng: np.random.Generator, seeds: int = 2, subjects: int = 12) -> list[np.ndarray]:
    """Per size: (seeds, subjects) errors = the law + a subject's difficulty (shared by every size) + noise."""
    difficulty = rng.normal(0.0, 0.01, subjects)
    return [TRUE.err(d) + difficulty[None, :] + rng.normal(0.0, 0.004, (seeds, subjects)) for d in SIZES]


def test_intervals_cover_the_true_floor_and_exponent_in_90_percent_of_50_replicas():
    hits = {"E": 0, "alpha": 0}
    for k in range(50):
        fit = bootstrap_fit(SIZES, _study(np.random.default_rng(100 + k)), resamples=200, seed=k)
        for name, truth in (("E", TRUE.E), ("alpha", TRUE.alpha)):
            lo, hi = fit.intervals[name]
            hits[name] += lo <= truth <= hi
    assert hits["E"] >= 45 and hits["alpha"] >= 45, hits


def test_the_held_out_largest_size_is_predicted_inside_its_interval_and_a_break_is_caught():
    values = _study(np.random.default_rng(7))
    ok = holdout_check(SIZES, values, resamples=300)
    assert ok.size == 64.0 and ok.inside, ok
    assert ok.predicted == pytest.approx(TRUE.err(64.0), abs=0.01)
    broken = values[:-1] + [values[-1] + 0.08]                    # the largest size did much worse than the curve
    assert not holdout_check(SIZES, broken, resamples=300).inside


def test_a_fit_whose_sizes_span_less_than_the_noise_is_flagged_unreliable():
    """Four sizes within 2x of each other and noise larger than the trend: the intervals of the floor and of
    the extrapolations are wider than the measured range, so the report must not print them as confident."""
    rng = np.random.default_rng(0)
    sizes = [32.0, 40.0, 48.0, 64.0]
    fit = bootstrap_fit(sizes, [TRUE.err(d) + rng.normal(0, 0.03, (2, 3)) for d in sizes], resamples=200)
    assert {"E", "err@10x"} <= set(fit.unreliable)
    clean = bootstrap_fit(SIZES, _study(np.random.default_rng(1)), resamples=200)
    assert clean.unreliable == []


def test_a_study_with_four_fractions_reports_the_fit_the_holdout_and_the_subjects_needed(tmp_path):
    """The report's data-scaling section on synthetic scored cells whose test SSIM follows a known law:
    the fitted SSIM_inf is 1 - E within its interval, the held-out largest size is inside, and the
    subjects needed for SSIM >= 0.8 bracket the closed form."""
    import math

    from bidpm.config import load_config
    from bidpm.study.report import write_report

    n_train, fractions = 64, [0.0625, 0.125, 0.25, 0.5, 1.0]
    cfg = load_config(None, ["study.methods=[{label: B, name: bidpm}]", "study.pairing_ratios=[1.0]", "study.seeds=[0, 1]",
                             f"study.train_fractions={fractions}", "study.scaling_resamples=200", "study.ssim_targets=[0.8]",
                             "study.bootstrap_samples=100"])
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0, 0.01, 8)
    ids = [[f"s{j}", k] for j in range(8) for k in range(3)]
    cells = []
    for f in fractions:
        d = math.ceil(f * n_train)
        for seed in (0, 1):
            vals = {dd: {"ssim": [float(1 - TRUE.err(d) - difficulty[int(subj[1:])] + rng.normal(0, 0.003)) for subj, _ in ids],
                         "psnr": [20.0] * len(ids), "mae": [0.1] * len(ids)} for dd in ("fwd", "bwd")}
            summ = {f"test/{dd}_{m}_{s}": float(np.mean(vals[dd][m]) if s == "mean" else np.std(vals[dd][m]))
                    for dd in ("fwd", "bwd") for m in ("ssim", "psnr", "mae") for s in ("mean", "std")}
            summ.update({f"test/{m}_mean": summ[f"test/fwd_{m}_mean"] for m in ("ssim", "psnr", "mae")})
            cells.append({"cell": {"id": f"B-{f}-{seed}", "label": "B", "method": "bidpm", "ratio": 1.0, "seed": seed,
                                   "fraction": f}, "ids": ids, "params": 1, "checkpoint": "x",
                          "grids": [{"label": "training grid N=1", "steps": 1, "training_grid": True, "summary": summ,
                                     "values": vals}],
                          "cost": {"train_wall_s": 1.0, "images_per_s": 1.0, "peak_mem_mb": 1.0, "epochs": 1}})
    paths = write_report(cfg, str(tmp_path), cells, n_train=n_train)
    assert (tmp_path / "report" / "scaling.png").read_bytes()[:4] == b"\x89PNG" and "scaling.csv" in paths
    import csv

    rows = list(csv.DictReader((tmp_path / "report" / "scaling.csv").read_text().splitlines()))
    fwd = next(r for r in rows if r["direction"] == "fwd")
    assert float(fwd["ssim_inf_low"]) <= 1 - TRUE.E <= float(fwd["ssim_inf_high"])
    assert fwd["holdout_inside"] == "True" and float(fwd["holdout_size"]) == 64
    # the figure's points, one panel per metric: each seed's value at each size, against the cells (numpy)
    pts = list(csv.DictReader((tmp_path / "report" / "scaling_points.csv").read_text().splitlines()))
    assert {p["metric"] for p in pts} == {"ssim", "psnr", "mae"} and len(pts) == 2 * 3 * len(fractions) * 2
    for p in pts:
        cell = next(c for c in cells if c["cell"]["fraction"] == float(p["fraction"]) and c["cell"]["seed"] == int(p["seed"]))
        v = cell["grids"][0]["values"][p["direction"]][p["metric"]]
        want = (np.mean([np.mean(v[j * 3:(j + 1) * 3]) for j in range(8)]) if p["metric"] == "ssim" else np.mean(v))
        assert float(p["value"]) == pytest.approx(want, abs=1e-9), p
        assert float(p["train_subjects"]) == math.ceil(float(p["fraction"]) * n_train)
    need = TRUE.needed(0.2)
    assert float(fwd["needed SSIM>=0.8_low"]) <= need <= float(fwd["needed SSIM>=0.8_high"])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Data scaling" in md and "subjects for SSIM>=0.8" in md and "inside" in md


def test_flat_curves_and_unreachable_targets_give_inf_not_an_error():
    """A resample with alpha at its bound 0 used to overflow in ``needed``; percentiles of infs stay inf."""
    assert PowerLaw(E=0.02, B=0.18, alpha=0.0).needed(0.1) == float("inf")
    assert PowerLaw(E=0.02, B=0.18, alpha=1e-12).needed(0.1) == float("inf")
    rng = np.random.default_rng(2)
    flat = [0.2 + rng.normal(0, 0.01, (2, 4)) for _ in SIZES]
    fit = bootstrap_fit(SIZES, flat, resamples=200, targets={"SSIM>=0.9": 0.1})
    lo, hi = fit.intervals["needed@SSIM>=0.9"]
    assert not np.isnan(lo) and not np.isnan(hi) and hi == float("inf")
