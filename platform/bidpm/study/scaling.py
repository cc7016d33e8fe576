"""A study's data-scaling section (three or more ``study.train_fractions``): per method and direction,
quality against the number of training subjects, the power law fitted to it with bootstrap intervals
(``bidpm.scaling.fit``), the largest size predicted from the others, and the subjects needed for each
``study.ssim_targets``. Choices: the curve is drawn at the study's largest pairing ratio (Table 1's);
a fraction f of n training subjects is ceil(f * n) subjects (``data.train_fraction``'s rule); the
fitted error is 1 - SSIM, per test subject the mean over its slices.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Optional

import numpy as np

from ..data.pairing import share_count
from ..plots import png_bytes, pyplot
from ..scaling.fit import ScalingFit, bootstrap_fit, holdout_check
from ..evaluation import METRICS
from .tables import DIRS, LOWER_BETTER, cells_at, grid_of, representative

__all__ = ["scaling_section"]


def _subject_errors(cells: list[dict], label: str, ratio: float, fraction: float, d: str) -> Optional[np.ndarray]:
    """(seeds, test subjects) of 1 - SSIM, each subject's mean over its slices; None without cells."""
    group = sorted(cells_at(cells, label, ratio, fraction), key=lambda c: c["cell"]["seed"])
    if not group:
        return None
    rows = []
    for c in group:
        per: dict[str, list[float]] = defaultdict(list)
        grid = grid_of(c, representative(cells, label, ratio, "ssim", fraction))
        for (subject, _), v in zip(c["ids"], grid["values"][d]["ssim"]):
            if np.isfinite(v):              # a slice with an empty mask has no SSIM (as in the tables: nanmean)
                per[str(subject)].append(1.0 - float(v))
        rows.append([float(np.mean(per[s])) for s in sorted(per)])
    return np.array(rows)


def scaling_section(cells: list[dict], cfg: Any, n_train: int) -> Optional[dict[str, Any]]:
    """Markdown, files and console text of the section, or None with fewer than 3 fractions."""
    st = cfg.study
    fractions = sorted(set(st.train_fractions))
    if len(fractions) < 3:
        return None
    ratio = max(st.pairing_ratios)
    by_size: dict[float, float] = {}          # fractions that round to one subject count: the larger is kept
    for f in fractions:
        by_size[float(share_count(f, n_train))] = f
    sizes, fractions = list(by_size), list(by_size.values())
    if len(sizes) < 3:
        return None
    targets = {f"SSIM>={s:g}": 1.0 - s for s in st.ssim_targets}
    rows, curves, skipped = [], [], []
    for meth in st.methods:
        for d in DIRS:
            values = [_subject_errors(cells, meth.label, ratio, f, d) for f in fractions]
            if any(v is None for v in values) or len({v.shape for v in values}) != 1:
                continue
            try:
                fit = bootstrap_fit(sizes, values, st.scaling_resamples, targets=targets)
                held = holdout_check(sizes, values, st.scaling_resamples) if len(sizes) >= 4 else None
            except ValueError as exc:             # e.g. an error of 0 or NaN at some size: say so, keep the report
                skipped.append(f"{meth.label} {d}: no fit ({exc})")
                continue
            rows.append(_row(meth.label, d, fit, held, targets))
            curves.append((meth.label, d, values, fit))
    if not rows:
        return None
    md = _markdown(rows, ratio, st.scaling_resamples) + "".join(f"\n\n{line}" for line in skipped)
    points = _points(curves, sizes, ratio, cells, fractions)
    files = {"scaling.png": _figure(curves, sizes, ratio, points), "scaling.csv": rows, "scaling_points.csv": points}
    return {"md": md, "files": files, "printed": f"\nData scaling\n{md}"}


def _row(label: str, d: str, fit: ScalingFit, held: Any, targets: dict[str, float]) -> dict[str, Any]:
    q = lambda e: 1.0 - e  # noqa: E731 - SSIM from its error
    lo, hi = fit.intervals["E"]
    out = {"method": label, "direction": d, "ssim_inf": q(fit.law.E), "ssim_inf_low": q(hi), "ssim_inf_high": q(lo),
           "alpha": fit.law.alpha, "alpha_low": fit.intervals["alpha"][0], "alpha_high": fit.intervals["alpha"][1]}
    for k in ("2x", "10x"):
        e_lo, e_hi = fit.intervals[f"err@{k}"]
        out.update({f"ssim@{k}": q(fit.predictions[f"err@{k}"]), f"ssim@{k}_low": q(e_hi), f"ssim@{k}_high": q(e_lo)})
    for k in targets:
        out.update({f"needed {k}": fit.predictions[f"needed@{k}"], f"needed {k}_low": fit.intervals[f"needed@{k}"][0],
                    f"needed {k}_high": fit.intervals[f"needed@{k}"][1]})
    if held is not None:
        out.update({"holdout_size": held.size, "holdout_predicted": q(held.predicted), "holdout_low": q(held.interval[1]),
                    "holdout_high": q(held.interval[0]), "holdout_measured": q(held.measured), "holdout_inside": held.inside})
    out["unreliable"] = ",".join(fit.unreliable)
    return out


def _ci(r: dict, key: str, p: int = 3) -> str:
    v, lo, hi = r[key], r[f"{key}_low"], r[f"{key}_high"]
    fmt = (lambda x: "inf" if math.isinf(x) else f"{x:.0f}") if key.startswith("needed") else (lambda x: f"{x:.{p}f}")
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def _markdown(rows: list[dict], ratio: float, resamples: int) -> str:
    needed = [k for k in rows[0] if k.startswith("needed ") and not k.endswith(("_low", "_high"))]
    head = ["method", "dir", "SSIM_inf", "alpha", "SSIM @2x D", "SSIM @10x D", "held-out D: predicted vs measured",
            *[f"subjects for {k[7:]}" for k in needed]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        flag = " (interval wider than the data: unreliable)" if r["unreliable"] else ""
        held = (f"D={r['holdout_size']:.0f}: {r['holdout_predicted']:.3f} [{r['holdout_low']:.3f}, {r['holdout_high']:.3f}] vs "
                f"{r['holdout_measured']:.3f} ({'inside' if r['holdout_inside'] else 'OUTSIDE'})") if "holdout_size" in r else "-"
        lines.append("| " + " | ".join([r["method"], r["direction"], _ci(r, "ssim_inf") + flag, _ci(r, "alpha", 2),
                                        _ci(r, "ssim@2x"), _ci(r, "ssim@10x"), held, *[_ci(r, k) for k in needed]]) + " |")
    return (f"Fit: 1 - SSIM = E + B * D^-alpha over D training subjects at {100 * ratio:g}% paired (Huber loss on log "
            f"residuals, several starts); [95% bootstrap interval, {resamples} resamples of test subjects and seeds]. "
            "The held-out column fits all sizes but the largest and predicts it.\n\n" + "\n".join(lines))


def _points(curves: list[tuple], sizes: list[float], ratio: float, cells: list[dict], fractions: list[float]) -> list[dict]:
    """Every plotted point: per method, direction, metric (``evaluation.METRICS``) and size, each seed's test
    mean (SSIM: the fitted data, the mean over test subjects of each subject's slice mean; the others: the
    cell's test mean over slices, on the grid the SSIM fit uses)."""
    rows = []
    for label, d, values, _ in curves:
        for m in ["ssim", *[m for m in METRICS if m != "ssim"]]:
            for x, f, v in zip(sizes, fractions, values):
                group = sorted(cells_at(cells, label, ratio, f), key=lambda c: c["cell"]["seed"])
                grid = representative(cells, label, ratio, "ssim", f)
                per_seed = 1.0 - v.mean(axis=1) if m == "ssim" else [grid_of(c, grid)["summary"][f"test/{d}_{m}_mean"] for c in group]
                rows += [{"method": label, "direction": d, "metric": m, "train_subjects": x, "fraction": f,
                          "seed": c["cell"]["seed"], "value": float(q)} for c, q in zip(group, per_seed)]
    return rows


def _figure(curves: list[tuple], sizes: list[float], ratio: float, points: list[dict]) -> bytes:
    """One row of panels per metric, one column per direction: per-seed points, the mean over seeds, and on
    the SSIM row the fitted curve (the fit is on 1 - SSIM only)."""
    plt = pyplot()
    metrics = list(dict.fromkeys(p["metric"] for p in points))
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10, 3.4 * len(metrics)), sharex=True, squeeze=False)
    grid = np.geomspace(min(sizes), 10 * max(sizes), 100)
    for row, m in zip(axes, metrics):
        for ax, d in zip(row, DIRS):
            for k, (label, _, _, fit) in enumerate(c for c in curves if c[1] == d):
                color = f"C{k}"
                pts = [p for p in points if (p["method"], p["direction"], p["metric"]) == (label, d, m)]
                ax.scatter([p["train_subjects"] for p in pts], [p["value"] for p in pts], color=color, s=12, alpha=0.5)
                means = [np.mean([p["value"] for p in pts if p["train_subjects"] == x]) for x in sizes]
                ax.plot(sizes, means, "o" if m == "ssim" else "o-", color=color, label=f"{label} (mean over seeds)")
                if m == "ssim":
                    ax.plot(grid, 1.0 - fit.law.err(grid), "--", color=color, label=f"{label} fit")
            ax.set(xscale="log", ylabel=f"test {m.upper()}" + (" (lower is better)" if m in LOWER_BETTER else ""),
                   title=f"{d}: test {m.upper()} vs training subjects ({100 * ratio:g}% paired)")
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("training subjects")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)
