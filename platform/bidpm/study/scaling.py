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
from .tables import DIRS, cells_at, grid_of, representative

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
    png = _figure(curves, sizes, ratio)
    return {"md": md, "files": {"scaling.png": png, "scaling.csv": rows}, "printed": f"\nData scaling\n{md}"}


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


def _figure(curves: list[tuple], sizes: list[float], ratio: float) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    grid = np.geomspace(min(sizes), 10 * max(sizes), 100)
    for ax, d in zip(axes, DIRS):
        for k, (label, dd, values, fit) in enumerate(c for c in curves if c[1] == d):
            color = f"C{k}"
            for x, v in zip(sizes, values):
                ax.scatter([x] * v.shape[0], 1.0 - v.mean(axis=1), color=color, s=12, alpha=0.5)   # one point per seed
            ax.plot(sizes, [1.0 - v.mean() for v in values], "o", color=color, label=f"{label} (mean over seeds)")
            ax.plot(grid, 1.0 - fit.law.err(grid), "--", color=color, label=f"{label} fit")
        ax.set(xscale="log", xlabel="training subjects", title=f"{d}: test SSIM vs training subjects ({100 * ratio:g}% paired)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test SSIM")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)
