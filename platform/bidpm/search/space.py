"""The Bi-DPM search space, define-by-run (Optuna): trial -> config overrides. Pure (no Ray, no torch).

What is searched (paper section 2.1 leaves all of it open):
  - N and the time grid 0 = t_0 < ... < t_N = 1 (Eq. 5): ``uniform`` (t_n = n/N), ``warp``
    (t_n = (n/N)^gamma, one parameter whatever N) or ``free`` (N-1 interior points sampled in (0, 1)
    and sorted; TPE then learns *where* the matching points help, not only how many there are);
  - the weights w_0..w_N of Eq. 6: one end weight (w_0 = w_N, the loss is symmetric in the two
    directions) and one interior weight shared by w_1..w_{N-1} (paper: 1 and 0.5);
  - lambda_u of Eq. 9, only when some rows are unpaired (``data.pairing_ratio < 1``); the MMD kernel
    family and bandwidth scale (Eq. 8) only when lambda_u is in play;
  - optionally the learning rate and the paired distance (Eq. 7 uses LPIPS).

Conditional parameters are only *suggested* when they matter, so TPE never spends samples on a
lambda that has no effect. A range with ``low == high`` is a constant and is not suggested.

The result is a flat ``{"method.time_grid": [...], ...}`` dict of dotted config paths; trial configs
keep the raw suggestions too (names without dots), which is how the trainable tells them apart.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from ..config import Config, SearchSpaceConfig, with_overrides
from ..timegrid import uniform_grid


def _float(trial: Any, name: str, bounds: list[float], log: bool = False) -> float:
    """Suggest a float, or return the constant when the range is a single point."""
    low, high = float(bounds[0]), float(bounds[1])
    if low == high:
        return low
    return float(trial.suggest_float(name, low, high, log=log))


def _categorical(trial: Any, name: str, choices: list[Any]) -> Any:
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, list(choices))


def free_grid(raw: list[float], min_gap: float) -> list[float]:
    """Sort N-1 interior points into a strictly increasing grid 0 < t_1 < ... < t_{N-1} < 1.

    Points closer than ``min_gap`` (to each other or to 0 / 1) are pushed apart, first forward then
    backward, so every step has length >= min_gap. Needs (N) * min_gap <= 1 (checked by the config).
    """
    n = len(raw) + 1
    t = [0.0] + sorted(min(max(float(x), 0.0), 1.0) for x in raw) + [1.0]
    for i in range(1, n):                              # forward: keep a gap after the previous point
        t[i] = max(t[i], t[i - 1] + min_gap)
    for i in range(n - 1, 0, -1):                      # backward: keep a gap before the next one
        t[i] = min(t[i], t[i + 1] - min_gap)
    return [round(x, 6) for x in t[:-1]] + [1.0]


def warp_grid(n_steps: int, gamma: float, min_gap: float) -> list[float]:
    """t_n = (n/N)^gamma, with every step at least ``min_gap`` long (same rule as ``free_grid``).

    Why the guard: a large gamma puts t_1 = (1/N)^gamma below the 6-decimal rounding (gamma = 30,
    N = 4: ~1e-18 -> 0.0 = t_0, an invalid grid) and a small one crowds t_{N-1} against 1; such
    points are pushed into [min_gap, 1 - min_gap] and apart, so the grid stays strictly increasing.
    Grids whose steps are already >= min_gap are returned as (n/N)^gamma, rounded to 6 decimals.
    """
    return free_grid([(i / n_steps) ** gamma for i in range(1, n_steps)], min_gap)


def time_grid(trial: Any, space: SearchSpaceConfig, n_steps: int) -> list[float]:
    """Sample the time grid t_0..t_N for ``n_steps`` = N (placement from ``space.grid_placement``)."""
    if n_steps == 1:
        return [0.0, 1.0]
    if space.grid_placement == "uniform":
        return [round(t, 6) for t in uniform_grid(n_steps)]
    if space.grid_placement == "warp":
        gamma = _float(trial, "warp_gamma", space.warp_gamma, log=True)
        return warp_grid(n_steps, gamma, space.min_gap)
    lo, hi = space.min_gap, 1.0 - space.min_gap
    raw = [trial.suggest_float(f"t_{i}_of_{n_steps}", lo, hi) for i in range(1, n_steps)]
    return free_grid(raw, space.min_gap)


def sample_overrides(trial: Any, space: SearchSpaceConfig, pairing_ratio: float) -> dict[str, Any]:
    """One define-by-run draw -> dotted config overrides (see the module docstring for the space).

    ``trial``: an ``optuna.Trial`` (or Ray Tune's wrapper of one, or ``optuna.trial.FixedTrial``).
    """
    n_steps = int(_categorical(trial, "n_steps", space.n_steps))
    grid = time_grid(trial, space, n_steps)
    w_end = _float(trial, "end_weight", space.end_weight)
    w_int = _float(trial, "interior_weight", space.interior_weight) if n_steps > 1 else None
    weights = [w_end] + [w_int] * (n_steps - 1) + [w_end]
    out: dict[str, Any] = {"method.time_grid": grid, "method.step_weights": [round(w, 6) for w in weights]}
    if pairing_ratio < 1.0:
        out["method.lambda_unpaired"] = _float(trial, "lambda_unpaired", space.lambda_unpaired, log=True)
        out["method.mmd_kernel"] = _categorical(trial, "mmd_kernel", space.mmd_kernels)
        out["method.mmd_bandwidth_scale"] = _float(trial, "mmd_bandwidth_scale", space.mmd_bandwidth_scale, log=True)
    else:
        out["method.lambda_unpaired"] = 0.0      # no unpaired rows: Eq. 9's second term is empty
    if space.lr is not None:
        out["train.lr"] = _float(trial, "lr", space.lr, log=True)
    if space.paired_distances is not None:
        out["method.paired_distance"] = _categorical(trial, "paired_distance", space.paired_distances)
    return out


def define_by_run(cfg: Config) -> Callable[[Any], Optional[dict[str, Any]]]:
    """The function OptunaSearch calls per trial: suggestions are captured, overrides returned.

    Overrides are returned as constants so every trial config carries the resolved grid and weights
    (readable in Tune's table and MLflow) next to the raw suggestions.
    """
    return functools.partial(sample_overrides, space=cfg.tune.space, pairing_ratio=cfg.data.pairing_ratio)  # picklable:
    # Tune saves the searcher (and this function) in the experiment state for resume


def overrides_of(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The dotted config overrides inside a Tune trial config (raw suggestions have no dots)."""
    return {k: v for k, v in trial_config.items() if "." in k}


def trial_config(cfg: Config, overrides: dict[str, Any]) -> Config:
    """The config one trial trains: the study config + the trial's overrides, with checkpoint
    retention ranked by the study's objective.

    Why: Tune keeps, per trial, the checkpoint of the epoch that is best by ``tune.metric``; Ray Train's
    retention (``train.checkpoint_keep``) deletes all but the best checkpoints by
    ``train.checkpoint_score``. With two different metrics the trial's "best" checkpoint could already
    be deleted, so inside a study ``train.checkpoint_score``/``_mode`` are set to ``tune.metric``/``mode``.
    """
    return with_overrides(cfg, {**overrides, "train.checkpoint_score": cfg.tune.metric,
                                "train.checkpoint_score_mode": cfg.tune.mode})
