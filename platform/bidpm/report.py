"""Tables and figures of one evaluation, for people: the step-count table (paper Fig. 7 layout) and the
volume table (paper Table 5). Every table ends with the value scale's note (``evaluation.scale_note``),
so its numbers can be compared with papers. A study's tables are ``bidpm.study.report``'s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .evaluation import METRICS, SHORT, Evaluation, scale_note
from .io.storage import write_bytes_atomic
from .plots import png_bytes, pyplot
from .tables import fixed_width

DIRS = tuple(SHORT.values())  # fwd, bwd


def _cell(mean: Any, std: Any, metric: str) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    fmt = "{:.2f}" if "psnr" in metric or metric.startswith(("hu_mae", "hu25_mae")) else "{:.4f}"
    return f"{fmt.format(mean)}±{fmt.format(std)}"


def grid_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """One plain row per grid: label, steps, grid, training_grid and the summary keys without the split."""
    rows = []
    for g in ev.grids:
        s = {k.split("/", 1)[1]: v for k, v in g.summary(ev.split).items()}
        rows.append({"label": g.spec.label, "steps": g.spec.steps, "grid": list(g.spec.grid),
                     "training_grid": g.spec.training_grid, **s})
    return rows


def format_grid_table(ev: Evaluation) -> str:
    """Grid x (direction, metric) table of mean±std over images."""
    ms = ev.main.metrics                                     # + MS-SSIM on images of 176 px and more
    head = ["grid", "N"] + [f"{d} {m.upper().replace('_', '-')}" for d in DIRS for m in ms]
    body = [[r["label"], str(r["steps"])] + [_cell(r[f"{d}_{m}_mean"], r[f"{d}_{m}_std"], m) for d in DIRS for m in ms]
            for r in grid_rows(ev)]
    return fixed_width(head, body) + f"\n{scale_note(ev.scale)}; mean±std over {int(ev.main.summary(ev.split)[f'{ev.split}/images'])} slices"


def format_original_table(orig: Any) -> str:
    """The original volumes' metrics per direction (``evaluation.original``), mean±std over subjects."""
    from .evaluation.original import ORIGINAL_CONVENTION

    s = orig.summary()
    keys = [k for k in ("hu_mae", "hu_psnr", "hu_ssim", "hu25_mae", "hu25_psnr", "hu25_ms_ssim", "vol_ssim", "vol_psnr",
                        "vol_mae", "sag_ssim", "cor_ssim", "tp_grad_mae")
            if any(f"{orig.split}/{d}_orig_{k}_mean" in s for d in DIRS)]
    names = {"hu": "SR2023 ", "hu25": "SR2025 ", "vol": "3-D "}
    head = ["direction"] + [names.get(k.split("_", 1)[0], "") + (k.split("_", 1)[1] if k.split("_", 1)[0] in names else k).upper()
                            for k in keys]
    body = [[d] + [_cell(s.get(f"{orig.split}/{d}_orig_{k}_mean"), s.get(f"{orig.split}/{d}_orig_{k}_std"), k) for k in keys]
            for d in DIRS]
    lines = [fixed_width(head, body), f"{len(orig.subjects)} original volumes, mean±std over subjects; {ORIGINAL_CONVENTION}"]
    lines += [f"  not scored: {name}: {why}" for name, why in orig.skipped.items()]
    return "\n".join(lines)


def format_volume_table(ev: Evaluation) -> str:
    """Per-volume 3-D metrics (paper Table 5) and, where a direction produces CT, SynthRAD's HU metrics."""
    if not ev.volumes:
        return ""
    s = ev.summary()
    keys = [k for k in ("vol_ssim", "vol_psnr", "vol_mae", "vol_sag_ssim", "vol_cor_ssim", "vol_tp_grad_mae",
                        "hu_mae", "hu_psnr", "hu_ssim", "hu25_mae", "hu25_psnr", "hu25_ms_ssim")
            if any(f"{ev.split}/{d}_{k}_mean" in s for d in DIRS)]
    head = ["direction"] + [{"vol": "3-D ", "hu": "SR2023 ", "hu25": "SR2025 "}[k.split("_", 1)[0]] + k.split("_", 1)[1].upper()
                            for k in keys]
    body = [[d] + [_cell(s.get(f"{ev.split}/{d}_{k}_mean"), s.get(f"{ev.split}/{d}_{k}_std"), k) for k in keys] for d in DIRS]
    note = (f"{len(ev.volume_subjects)} volumes (the shards' slices stacked in slice order, training grid); "
            f"3-D: 7x7x7 uniform-window SSIM in the mask, value scale as the slices ({scale_note(ev.scale)}); "
            "inter-slice consistency: SAG/COR_SSIM of the reformatted sagittal/coronal planes, TP_GRAD_MAE the "
            "through-plane gradient error (metrics.consistency); "
            "SR2023: SynthRAD2023's MAE (HU) / PSNR / SSIM on [-1024, 3000] HU; SR2025: SynthRAD2025's MAE (HU) / PSNR / "
            "masked 3-D MS-SSIM on [-1024, 3071] HU (metrics.synthrad2025)")
    skipped = f"\nskipped (NaN): {', '.join(f'{k}: {v}' for k, v in ev.volumes_skipped.items())}" if ev.volumes_skipped else ""
    return fixed_width(head, body) + "\n" + note + skipped


def plot_steps(ev: Evaluation, path: str | Path, title: str) -> Path:
    """Quality vs Euler steps, both directions, one panel per metric (paper Fig. 7 layout), error bars = std."""
    import matplotlib.ticker

    plt = pyplot()

    rows = grid_rows(ev)
    uniform = sorted((r for r in rows if r["label"].startswith("uniform")), key=lambda r: r["steps"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
    for ax, m in zip(axes, METRICS):
        for (d, name), colour in zip((("fwd", "forward"), ("bwd", "backward")), ("tab:blue", "tab:orange")):
            ax.errorbar([r["steps"] for r in uniform], [r[f"{d}_{m}_mean"] for r in uniform],
                        yerr=[r[f"{d}_{m}_std"] for r in uniform], marker="o", capsize=3, color=colour, label=f"{name} (uniform)")
            for r in rows:
                if r["training_grid"]:
                    ax.plot([r["steps"]], [r[f"{d}_{m}_mean"]], marker="*", markersize=14, color=colour, linestyle="none",
                            label=f"{name} (training grid)")
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["steps"] for r in rows}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("Euler steps N")
        ax.set_title(m.upper() + (" (lower is better)" if m == "mae" else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}\n{scale_note(ev.scale)}", fontsize=8)
    fig.tight_layout()
    write_bytes_atomic(str(path), png_bytes(fig))
    return Path(path)
