"""The Pareto report of a multi-objective search: the non-dominated trials (Optuna's ``study.best_trials``
on the study of this search's trial rows, ``optuna_study.rows_study``) as a table - printed and written as
CSV - and two figures: Optuna's own Pareto-front plot of the objectives, and quality against NFE in
both directions (forward / backward SSIM), the front in colour and dominated trials grey.

Only trials with a checkpoint count: the front is what can be registered (``tracking.budgets``).
"""

from __future__ import annotations

import warnings
import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config
from ..io.storage import write_bytes_atomic
from ..plots import png_bytes, pyplot
from ..tables import fixed_width
from .objectives import objective_pairs
from .optuna_study import rows_study, trial_values

FRONT_CSV, FRONT_PNG, NFE_PNG = "pareto_front.csv", "pareto_front.png", "quality_vs_nfe.png"

__all__ = ["FRONT_CSV", "FRONT_PNG", "NFE_PNG", "format_front", "front_csv", "front_rows", "plot_front", "plot_nfe"]


def front_rows(cfg: Config, rows: Sequence[Mapping[str, Any]]) -> tuple[Any, list[Mapping[str, Any]]]:
    """(the study of the rows with a checkpoint, the rows on its Pareto front ordered by the second
    objective then the first)."""
    study = rows_study(cfg, rows, keep=lambda r: bool(r.get("checkpoint_path")))
    on_front = {t.user_attrs["bidpm.trial"] for t in study.best_trials}
    by_trial = {r["trial"]: r for r in rows}
    front = [by_trial[t] for t in on_front]
    pairs = objective_pairs(cfg)

    def key(r: Mapping[str, Any]) -> tuple[float, ...]:
        v = dict(zip([m for m, _ in pairs], trial_values(cfg, r) or []))
        return tuple(v[m] if mode == "min" else -v[m] for m, mode in pairs[1:] + pairs[:1])

    return study, sorted(front, key=key)


def _columns(cfg: Config) -> list[tuple[str, str]]:
    metrics = [m for m, _ in objective_pairs(cfg)]
    extra = [k for k in ("val/fwd_ssim_mean", "val/bwd_ssim_mean") if k not in metrics]
    return [("trial", "trial"), ("N", "n_steps"), ("grid", "time_grid")] + [(m, m) for m in metrics + extra]


def _cell(row: Mapping[str, Any], key: str) -> Any:
    return (row.get("values") or {}).get(key, row.get(key))


def format_front(cfg: Config, front: Sequence[Mapping[str, Any]]) -> str:
    """The front as a fixed-width table (console and MLflow)."""
    from .table import _fmt

    cols = _columns(cfg)
    return fixed_width([c for c, _ in cols], [[_fmt(_cell(r, k)) for _, k in cols] for r in front])


def front_csv(cfg: Config, front: Sequence[Mapping[str, Any]]) -> bytes:
    """The front as CSV (full precision; the grid as a space-separated list)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = _columns(cfg)
    w.writerow([c for c, _ in cols])
    for r in front:
        w.writerow([" ".join(str(x) for x in v) if isinstance(v := _cell(r, k), list) else v for _, k in cols])
    return buf.getvalue().encode()


def plot_front(cfg: Config, study: Any, path: str | Path) -> Path:
    """Optuna's Pareto-front plot (the first two objectives; dominated trials included, in grey)."""
    from optuna.visualization.matplotlib import plot_pareto_front

    import optuna

    plt = pyplot()
    names = [m for m, _ in objective_pairs(cfg)]
    with plt.style.context("default"), warnings.catch_warnings():   # Optuna sets ggplot: keep it out of later figures
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)   # its matplotlib plots
        ax = plot_pareto_front(study, target_names=names, include_dominated_trials=True)
        for coll in ax.collections:
            if coll.get_label() in ("Trial", "Feasible Trial"):
                coll.set_color("#bbbbbb")
        ax.legend()
        ax.figure.tight_layout()
        write_bytes_atomic(str(path), png_bytes(ax.figure, dpi=100))
    return Path(path)


def plot_nfe(rows: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Validation SSIM (best epoch) against N, forward and backward: front trials in colour and joined,
    dominated trials grey."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    on = {r["trial"] for r in front}
    for key, label, colour, marker in (("val/fwd_ssim_mean", "forward", "C0", "o"), ("val/bwd_ssim_mean", "backward", "C1", "s")):
        rest = [(r["n_steps"], r[key]) for r in rows if r["trial"] not in on and r.get(key) is not None and r.get("n_steps")]
        if rest:
            ax.scatter(*zip(*rest), marker=marker, color="#bbbbbb", label=f"{label}, dominated")
        pts = sorted((r["n_steps"], r[key]) for r in front if r.get(key) is not None and r.get("n_steps"))
        if pts:
            ax.plot(*zip(*pts), marker=marker, color=colour, label=f"{label}, Pareto front")
    ns = sorted({r["n_steps"] for r in rows if r.get("n_steps")})
    if ns:
        ax.set_xticks(ns)
    ax.set(xlabel="NFE (Euler steps N)", ylabel="validation SSIM (best epoch)", title="quality vs NFE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_bytes_atomic(str(path), png_bytes(fig, dpi=100))
    return Path(path)
