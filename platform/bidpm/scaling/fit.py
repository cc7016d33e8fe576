"""A saturating power law in the training-set size D, fitted the way the Chinchilla replication
recommends (Besiroglu et al. 2024, after Hoffmann et al. 2022): on the error scale

    err(D) = E + B * D^(-alpha),    E, B >= 0, alpha >= 0     (quality q = 1 - err for SSIM: q_inf = 1 - E)

with a Huber loss on the LOG residuals ``log err_pred - log err_obs`` (``log err_pred`` as a logsumexp of
``log E`` and ``log B - alpha log D``, stable for any parameters), from several starts (the best kept).
Why the error scale: SSIM saturates at 1, so ``1 - SSIM`` (and MAE as it is) decays to a floor E; the
fit is then the paper-free, well-studied form. Choices (the paper has no scaling study):
- Huber delta 1e-3 on log residuals (Chinchilla's), starts on a grid of alpha x E (the best loss kept);
- intervals: percentile bootstrap, resampling TEST SUBJECTS and SEEDS with replacement (the two sources
  of noise in a study; a subject drawn is drawn at every D, as the same test set scores every cell);
  each resample refitted from the point estimate;
- a fit is "unreliable" when an interval of q_inf or of a prediction is wider than the range of the
  measured qualities: the report then says so instead of printing a confident number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

HUBER_DELTA = 1e-3


@dataclass(frozen=True)
class PowerLaw:
    """err(D) = E + B * D^(-alpha)."""

    E: float
    B: float
    alpha: float

    def err(self, d: np.ndarray | float) -> np.ndarray:
        return self.E + self.B * np.asarray(d, dtype=float) ** (-self.alpha)

    def needed(self, err_target: float) -> float:
        """Smallest D with err(D) <= err_target (inf when the floor E is at or above it, or the curve is
        too flat to reach it in a representable D). Computed in logs: a near-zero alpha must not overflow."""
        if err_target <= self.E:
            return math.inf
        if self.B <= 0:
            return 1.0
        log_d = (math.log(self.B) - math.log(err_target - self.E)) / max(self.alpha, 1e-300)
        return math.exp(log_d) if log_d < 700.0 else math.inf


_LOWER = np.array([-30.0, -30.0, 0.0])
_UPPER = np.array([5.0, 30.0, 10.0])


def _huber_cost(r: np.ndarray) -> np.ndarray:
    """Sum over points of Huber(r) (quadratic within HUBER_DELTA, linear beyond): scipy's ``loss="huber"``."""
    a = np.abs(r)
    return np.where(a <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (a - 0.5 * HUBER_DELTA)).sum(axis=-1)


def fit_batch(log_d: np.ndarray, log_err: np.ndarray, theta0: np.ndarray, iters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Many fits at once: ``log_err`` (K, n) and starts ``theta0`` (K, 3) of (log E, log B, alpha) -> the
    fitted (K, 3) and their Huber costs (K,). Levenberg-Marquardt on Huber-reweighted least squares (IRLS),
    one damping factor per fit, steps kept inside the bounds and accepted only when the cost falls.
    Why not ``scipy.optimize.least_squares`` in a loop: a 1,000-resample bootstrap took ~20 s a curve with
    it; batched, the same minimum (checked against it in the tests) in well under a second."""
    th = np.clip(np.array(theta0, float), _LOWER, _UPPER)
    lam = np.full(len(th), 1e-3)

    def residual(t: np.ndarray) -> np.ndarray:
        return np.logaddexp(t[:, :1], t[:, 1:2] - t[:, 2:3] * log_d[None, :]) - log_err

    r = residual(th)
    cost = _huber_cost(r)
    for _ in range(iters):
        s = 1.0 / (1.0 + np.exp((th[:, 1:2] - th[:, 2:3] * log_d[None, :]) - th[:, :1]))   # d pred / d log E
        jac = np.stack([s, 1.0 - s, -(1.0 - s) * log_d[None, :]], axis=-1)                   # (K, n, 3)
        w = np.where(np.abs(r) <= HUBER_DELTA, 1.0, HUBER_DELTA / np.maximum(np.abs(r), 1e-300))
        jtw = jac.transpose(0, 2, 1) * w[:, None, :]
        a = jtw @ jac
        g = (jtw @ r[..., None])[..., 0]
        diag = np.einsum("kii->ki", a)
        step = -np.linalg.solve(a + (lam[:, None] * (diag + 1e-9))[..., None] * np.eye(3), g[..., None])[..., 0]
        trial = np.clip(th + step, _LOWER, _UPPER)
        r_new = residual(trial)
        c_new = _huber_cost(r_new)
        better = c_new < cost
        th[better], r[better], cost[better] = trial[better], r_new[better], c_new[better]
        lam = np.where(better, lam * 0.3, lam * 10.0)
        if np.all(lam > 1e12) or np.all(np.abs(step).max(axis=1) < 1e-12):
            break
    return th, cost


def _starts(log_d: np.ndarray, err: np.ndarray) -> np.ndarray:
    lo, hi = float(err.min()), float(err.max())
    return np.array([[math.log(lo * f), math.log(max(hi - lo * f, 1e-6)) + a * float(log_d.min()), a]
                     for a in (0.1, 0.5, 1.0, 2.0) for f in (0.1, 0.5, 0.9)])


def _check(d: np.ndarray, err: np.ndarray) -> None:
    if len(np.unique(d)) < 3:
        raise ValueError(f"a power-law fit needs at least 3 distinct sizes, got {sorted(set(d.tolist()))}")
    if np.any(err <= 0) or not np.all(np.isfinite(err)):
        raise ValueError("errors must be finite and > 0 (use 1 - SSIM or MAE)")


def fit_power_law(d: np.ndarray, err: np.ndarray) -> PowerLaw:
    """Fit ``err(D)`` (errors > 0) at sizes ``d`` from several starts, the lowest cost kept (module docstring)."""
    d, err = np.asarray(d, float), np.asarray(err, float)
    _check(d, err)
    log_d = np.log(d)
    starts = _starts(log_d, err)
    th, cost = fit_batch(log_d, np.repeat(np.log(err)[None, :], len(starts), axis=0), starts)
    e, b, alpha = th[int(np.argmin(cost))]
    return PowerLaw(float(math.exp(e)), float(math.exp(b)), float(alpha))


@dataclass
class ScalingFit:
    """A fit with its bootstrap intervals (95% percentile). ``values``: per size D, an array
    (seeds, test subjects) of the ERROR metric averaged over each subject's slices."""

    sizes: list[float]
    measured: list[float]                 # mean error per size
    law: PowerLaw
    resamples: int
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    predictions: dict[str, float] = field(default_factory=dict)
    unreliable: list[str] = field(default_factory=list)


def _resampled_means(values: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, sizes) mean errors over resampled seeds and subjects; one draw of seeds and of subjects per
    resample, shared by every size (the same test subjects and seeds score every size)."""
    seeds, subjects = values[0].shape
    out = np.empty((n, len(values)))
    for k in range(n):
        s = rng.integers(0, seeds, seeds)
        j = rng.integers(0, subjects, subjects)
        out[k] = [v[np.ix_(s, j)].mean() for v in values]
    return out


def bootstrap_fit(sizes: list[float], values: list[np.ndarray], resamples: int = 1000, seed: int = 0,
                  predict_at: Optional[dict[str, float]] = None, targets: Optional[dict[str, float]] = None) -> ScalingFit:
    """The fit of the mean errors and its intervals for E, alpha, B, ``err`` at each ``predict_at`` size
    (default: 2x and 10x the largest measured size) and the size ``needed`` for each error in ``targets``."""
    shapes = {v.shape for v in values}
    if len(shapes) != 1:
        raise ValueError(f"every size needs the same seeds x subjects, got shapes {sorted(shapes)}")
    d = np.asarray(sizes, float)
    means = np.array([v.mean() for v in values])
    law = fit_power_law(d, means)
    at = predict_at or {"2x": 2 * d.max(), "10x": 10 * d.max()}
    boots = _resampled_means(values, np.random.default_rng(seed), resamples)
    targets = targets or {}
    start = np.array([[math.log(max(law.E, 1e-12)), math.log(max(law.B, 1e-12)), law.alpha]])
    th, _ = fit_batch(np.log(d), np.log(np.maximum(boots, 1e-12)), np.repeat(start, len(boots), axis=0))
    fits = [PowerLaw(float(math.exp(e)), float(math.exp(b)), float(a)) for e, b, a in th]
    params = np.array([[f.E, f.B, f.alpha] + [float(f.err(x)) for x in at.values()] + [f.needed(t) for t in targets.values()]
                       for f in fits])
    out = ScalingFit(list(map(float, sizes)), means.tolist(), law, resamples)
    names = ["E", "B", "alpha", *[f"err@{k}" for k in at], *[f"needed@{k}" for k in targets]]
    for i, name in enumerate(names):      # order statistics, not interpolation: an inf (a target below a
        col = params[:, i]                  # resample's floor) stays inf instead of inf - inf = nan
        out.intervals[name] = (float(np.percentile(col, 2.5, method="lower")), float(np.percentile(col, 97.5, method="higher")))
    out.predictions = {f"err@{k}": float(law.err(x)) for k, x in at.items()}
    out.predictions.update({f"needed@{k}": law.needed(t) for k, t in targets.items()})
    span = float(means.max() - means.min())
    for name in ("E", *[f"err@{k}" for k in at]):
        lo, hi = out.intervals[name]
        if hi - lo > span:
            out.unreliable.append(name)
    return out


@dataclass
class HoldOut:
    """Fit on every size but the largest, predict the largest: the prediction, its interval, the measurement."""

    size: float
    predicted: float
    interval: tuple[float, float]
    measured: float

    @property
    def inside(self) -> bool:
        return self.interval[0] <= self.measured <= self.interval[1]


def holdout_check(sizes: list[float], values: list[np.ndarray], resamples: int = 1000, seed: int = 0) -> HoldOut:
    order = np.argsort(sizes)
    keep = [int(i) for i in order[:-1]]
    last = int(order[-1])
    fit = bootstrap_fit([sizes[i] for i in keep], [values[i] for i in keep], resamples, seed, {"held out": sizes[last]})
    return HoldOut(float(sizes[last]), fit.predictions["err@held out"], fit.intervals["err@held out"],
                   float(values[last].mean()))
