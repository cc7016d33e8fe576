"""A study's tables and tests, from its scored cells (``cells/<id>.json``): paper Tables 1-2, cost, and
whether Bi-DPM's lead over the best baseline is statistically supported; the figures use the same rows.

Choices, stated in every report:
- A method's row uses one step count: Bi-DPM its training grid, CycleGAN its one step, and each
  baseline the NFE of ``study.baseline_nfe`` with the best mean test ``study.metric`` at that ratio
  (named in the cell). Picking the baselines' NFE on the test split favours the baselines.
- "a ± b [c]": a = mean over seeds of the cells' mean over test images, b = std over seeds (ddof 0),
  c = per-image spread (mean over seeds of the std over test images).
- Significance: per test image, the metric averaged over seeds, Bi-DPM minus the best baseline; a paired
  bootstrap (``study.bootstrap_samples`` resamples of images, seed 0) 95% interval of the mean difference,
  and the Wilcoxon signed-rank p-value. "supported" when the interval excludes 0 in Bi-DPM's favour
  (for MAE lower is better).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any, Optional

import numpy as np

from ..evaluation import METRICS, SHORT

DIRS = tuple(SHORT.values())
LOWER_BETTER = {"mae"}


def grid_of(cell: dict, label: Optional[str] = None) -> dict:
    gs = cell["grids"]
    return next((g for g in gs if g["label"] == label), None) if label else next((g for g in gs if g["training_grid"]), gs[0])


def cells_at(cells: list[dict], label: str, ratio: float, fraction: float = 1.0) -> list[dict]:
    return [c for c in cells if c["cell"]["label"] == label and c["cell"]["ratio"] == ratio
            and c["cell"]["fraction"] == fraction]


def representative(cells: list[dict], label: str, ratio: float, metric: str, fraction: float = 1.0) -> Optional[str]:
    """Which grid stands for the method at this ratio (module docstring); None when it has no cells."""
    group = cells_at(cells, label, ratio, fraction)
    if not group:
        return None
    if group[0]["cell"]["method"] in ("bidpm", "cyclegan"):
        return grid_of(group[0])["label"]
    sign = -1.0 if metric in LOWER_BETTER else 1.0
    means = {g["label"]: np.mean([grid_of(c, g["label"])["summary"][f"test/{metric}_mean"] for c in group])
             for g in group[0]["grids"]}
    return max(means, key=lambda k: sign * means[k])


def aggregate(cells: list[dict], label: str, ratio: float, grid: str, fraction: float = 1.0) -> dict[str, float]:
    """mean / std over seeds and per-image spread of every (direction, metric), plus the seed count."""
    group = [c for c in cells_at(cells, label, ratio, fraction) if grid_of(c, grid) is not None]
    out: dict[str, float] = {"seeds": float(len(group))}
    for d in DIRS:
        for m in METRICS:
            per = [grid_of(c, grid)["summary"] for c in group]
            means = np.array([p[f"test/{d}_{m}_mean"] for p in per])
            out[f"{d}_{m}"] = float(means.mean()) if len(means) else float("nan")
            out[f"{d}_{m}_seed_std"] = float(means.std()) if len(means) else float("nan")
            out[f"{d}_{m}_spread"] = float(np.mean([p[f"test/{d}_{m}_std"] for p in per])) if per else float("nan")
    return out


def _fmt(a: dict, key: str) -> str:
    p = 2 if "psnr" in key else 4
    return f"{a[key]:.{p}f} ± {a[key + '_seed_std']:.{p}f} [{a[key + '_spread']:.{p}f}]"


def table(cells: list[dict], cfg: Any, ratio: float, bracket: Optional[float] = None,
          fraction: float = 1.0) -> tuple[str, list[dict]]:
    """Markdown table: methods x (direction, metric) at ``ratio`` and training ``fraction``; ``bracket``: the
    same cells at that ratio in brackets (Table 2 shows the 100%-paired values so). Returns (markdown, csv rows)."""
    st = cfg.study
    head = ["method", "NFE"] + [f"{d} {m.upper()}" for d in DIRS for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for meth in st.methods:
        grid = representative(cells, meth.label, ratio, st.metric, fraction)
        if grid is None:
            continue
        a = aggregate(cells, meth.label, ratio, grid, fraction)
        b = None
        if bracket is not None and (g2 := representative(cells, meth.label, bracket, st.metric, fraction)) is not None:
            b = aggregate(cells, meth.label, bracket, g2, fraction)
        cellv = [_fmt(a, f"{d}_{m}") + (f" ({b[f'{d}_{m}']:.{2 if m == 'psnr' else 4}f})" if b else "")
                 for d in DIRS for m in METRICS]
        nfe = next(g["steps"] for g in cells_at(cells, meth.label, ratio, fraction)[0]["grids"] if g["label"] == grid)
        lines.append("| " + " | ".join([meth.label, str(nfe), *cellv]) + " |")
        rows.append({"method": meth.label, "ratio": ratio, "fraction": fraction, "grid": grid, "nfe": nfe, **a})
    return "\n".join(lines), rows


def significance(cells: list[dict], cfg: Any, ratio: float, fraction: float = 1.0) -> list[dict]:
    """For each Bi-DPM row and direction: the difference to the best baseline at ``ratio`` and training
    ``fraction`` (module docstring)."""
    from scipy.stats import wilcoxon

    st, m = cfg.study, cfg.study.metric
    sign = -1.0 if m in LOWER_BETTER else 1.0
    reps = {x.label: representative(cells, x.label, ratio, m, fraction) for x in st.methods}
    means = {lab: aggregate(cells, lab, ratio, g, fraction) for lab, g in reps.items() if g is not None}
    bidpm = [x.label for x in st.methods if x.name == "bidpm" and x.label in means]
    base = [x.label for x in st.methods if x.name != "bidpm" and x.label in means]
    out = []
    for d in DIRS:
        if not base:
            break
        best = max(base, key=lambda lab: sign * means[lab][f"{d}_{m}"])
        for lab in bidpm:
            a = _per_image(cells, lab, ratio, reps[lab], d, m, fraction)
            b = _per_image(cells, best, ratio, reps[best], d, m, fraction)
            keys = sorted(set(a) & set(b))
            diff = np.array([a[k] - b[k] for k in keys])
            diff = diff[~np.isnan(diff)]
            rng = np.random.default_rng(0)
            boot = diff[rng.integers(0, len(diff), (st.bootstrap_samples, len(diff)))].mean(axis=1) if len(diff) else np.array([np.nan])
            lo, hi = np.percentile(boot, [2.5, 97.5])
            p = float(wilcoxon(diff).pvalue) if len(diff) > 1 and np.any(diff != 0) else float("nan")
            ok = (lo > 0) if sign > 0 else (hi < 0)
            out.append({"ratio": ratio, "fraction": fraction, "direction": d, "bidpm": lab, "baseline": best, "metric": m, "images": len(diff),
                        "mean_diff": float(diff.mean()) if len(diff) else float("nan"), "ci_low": float(lo),
                        "ci_high": float(hi), "wilcoxon_p": p, "supported": bool(ok)})
    return out


def _per_image(cells: list[dict], label: str, ratio: float, grid: str, d: str, m: str,
               fraction: float = 1.0) -> dict[tuple, float]:
    """(subject, slice) -> the metric averaged over the seeds' cells."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for c in cells_at(cells, label, ratio, fraction):
        for key, v in zip(c["ids"], grid_of(c, grid)["values"][d][m]):
            acc[tuple(key)].append(v)
    return {k: float(np.nanmean(v)) for k, v in acc.items()}


def to_csv(rows: list[dict]) -> bytes:
    if not rows:
        return b""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def device_unit(cells: list[dict]) -> str:
    """``GPU-h`` / ``CPU-h``: what the cells' device-hours count (``bidpm.tune.cost``); ``device-h`` if mixed or unknown."""
    kinds = {c["cost"].get("device") for c in cells} - {None}
    return f"{kinds.pop()}-h" if len(kinds) == 1 else "device-h"


def _hours(group: list[dict]) -> float:
    """Device-hours summed over ``group`` (cells scored before it was recorded count as nan)."""
    return float(sum(c["cost"].get("device_hours", np.nan) for c in group)) if group else float("nan")


def cell_costs(cells: list[dict]) -> tuple[str, list[dict]]:
    """One row per cell: its training's attempts, wall seconds over them, devices held and device-hours."""
    unit = device_unit(cells)
    lines = [f"| cell | method | ratio | fraction | seed | attempts | train s (all attempts) | devices | {unit} |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for c in sorted(cells, key=lambda c: c["cell"]["id"]):
        k, cost = c["cell"], c["cost"]
        rows.append({"cell": k["id"], "method": k["label"], "ratio": k["ratio"], "fraction": k["fraction"],
                     "seed": k["seed"], "attempts": cost.get("attempts"), "train_s": cost.get("train_s", np.nan),
                     "devices": cost.get("devices"), "device": cost.get("device"),
                     "device_hours": cost.get("device_hours", np.nan)})
        r = rows[-1]
        lines.append(f"| {r['cell']} | {r['method']} | {r['ratio']:g} | {r['fraction']:g} | {r['seed']} | "
                     f"{r['attempts'] or '-'} | {r['train_s']:.0f} | {r['devices'] or '-'} | {r['device_hours']:.4f} |")
    return "\n".join(lines), rows


def ratio_costs(cells: list[dict], cfg: Any) -> str:
    """Device-hours per method (rows) and pairing ratio (columns), summed over seeds and training fractions."""
    ratios = sorted({c["cell"]["ratio"] for c in cells}, reverse=True)
    lines = ["| method | " + " | ".join(f"{r:.0%} paired" for r in ratios) + " | all |", "|---|" + "---|" * (len(ratios) + 1)]
    for meth in cfg.study.methods:
        group = [c for c in cells if c["cell"]["label"] == meth.label]
        if group:
            per = [_hours([c for c in group if c["cell"]["ratio"] == r]) for r in ratios]
            lines.append(f"| {meth.label} | " + " | ".join(f"{h:.4f}" for h in per) + f" | {_hours(group):.4f} |")
    return "\n".join(lines)


def cost_table(cells: list[dict], cfg: Any) -> tuple[str, list[dict]]:
    """Training wall time, images/s, peak memory and parameters per method (mean over its cells), and its
    device-hours summed over its cells and their attempts."""
    with_fid = any("fid_fwd" in c for c in cells)
    unit = device_unit(cells)
    lines = [f"| method | cells | train wall s | images/s | peak MB (worker) | parameters | {unit} (sum) |"
             + (" FID fwd |" if with_fid else ""), "|---|---|---|---|---|---|---|" + ("---|" if with_fid else "")]
    rows = []
    for meth in cfg.study.methods:
        group = [c for c in cells if c["cell"]["label"] == meth.label]
        if not group:
            continue
        mean = lambda k: float(np.mean([c["cost"].get(k) or np.nan for c in group]))  # noqa: E731
        params = group[0].get("params_generators", group[0]["params"])
        fid = float(np.mean([c.get("fid_fwd", np.nan) for c in group]))
        rows.append({"method": meth.label, "cells": len(group), "train_wall_s": mean("train_wall_s"),
                     "images_per_s": mean("images_per_s"), "peak_mem_mb": mean("peak_mem_mb"), "params": params,
                     "fid_fwd": fid, "device_hours": _hours(group), "device_unit": unit})
        r = rows[-1]
        lines.append(f"| {meth.label} | {r['cells']} | {r['train_wall_s']:.0f} | {r['images_per_s']:.1f} | "
                     f"{r['peak_mem_mb']:.0f} | {params:,}{' (generators)' if 'params_generators' in group[0] else ''} | "
                     f"{r['device_hours']:.4f} |" + (f" {fid:.2f} |" if with_fid else ""))
    note = "" if with_fid else ("\n\nFID: not computed (study.fid=false, or the Inception v3 weights are not in "
                                "TORCH_HOME's hub cache; see bidpm.metrics.fid)")
    return "\n".join(lines) + note, rows
