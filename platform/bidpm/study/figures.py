"""A study's figures: paper Figure 5 (quality vs pairing ratio) and Figure 7 (quality vs NFE), both
directions, mean over seeds with the std over seeds as error bars; each with its rows for a CSV."""

from __future__ import annotations

from typing import Any

from ..evaluation import scale_note
from ..plots import png_bytes, pyplot
from .tables import DIRS, aggregate, cells_at, representative

__all__ = ["figure5", "figure7", "paired_subjects_figure"]


def figure5(cells: list[dict], cfg: Any, fraction: float = 1.0) -> tuple[bytes, list[dict]]:
    """Metric vs paired % per method at training ``fraction``, both directions, error bars = std over seeds."""
    st, m = cfg.study, cfg.study.metric
    rows = []
    for meth in st.methods:
        for r in st.pairing_ratios:
            g = representative(cells, meth.label, r, m, fraction)
            if g is not None:
                a = aggregate(cells, meth.label, r, g, fraction)
                rows.append({"method": meth.label, "paired_pct": 100 * r, "grid": g, "fraction": fraction,
                             **{k: a[k] for k in a if k.startswith(tuple(DIRS))}})
    return _plot(rows, "paired_pct", m, "paired rows (%)", log=True,
                 title=f"Figure 5: quality vs pairing ratio{_of(fraction)}", cfg=cfg), rows


def paired_subjects_figure(rows5: list[dict], cfg: Any, fraction: float, n_train: int) -> tuple[bytes, list[dict]]:
    """Figure 5's rows against the number of paired training subjects at a fixed total (``data.pairing_unit=
    subject``): D = share_count(fraction, n_train) subjects, share_count(ratio, D) of them paired."""
    from ..data.pairing import share_count

    d = share_count(fraction, n_train)
    rows = [{**r, "train_subjects": d, "paired_subjects": share_count(r["paired_pct"] / 100, d)} for r in rows5]
    return _plot(rows, "paired_subjects", cfg.study.metric, f"paired training subjects (of {d})", log=True,
                 title=f"Quality vs paired subjects, {d} training subjects{_of(fraction)}", cfg=cfg), rows


def figure7(cells: list[dict], cfg: Any, ratio: float, fraction: float = 1.0) -> tuple[bytes, list[dict]]:
    """Metric vs NFE per method at ``ratio`` and training ``fraction`` (every scored grid), error bars = std
    over seeds."""
    rows = []
    for meth in cfg.study.methods:
        group = cells_at(cells, meth.label, ratio, fraction)
        for g in (group[0]["grids"] if group else []):
            a = aggregate(cells, meth.label, ratio, g["label"], fraction)
            rows.append({"method": meth.label + ("" if g["training_grid"] or meth.name != "bidpm" else " (other N)"),
                         "nfe": g["steps"], "grid": g["label"], "fraction": fraction,
                         **{k: a[k] for k in a if k.startswith(tuple(DIRS))}})
    return _plot(rows, "nfe", cfg.study.metric, "NFE (Euler steps)", log=True,
                 title=f"Figure 7: quality vs NFE at {100 * ratio:g}% paired{_of(fraction)}", cfg=cfg), rows


def _of(fraction: float) -> str:
    return "" if fraction == 1.0 else f", {100 * fraction:g}% of the training subjects"


def _plot(rows: list[dict], x: str, m: str, xlabel: str, log: bool, title: str, cfg: Any) -> bytes:
    import matplotlib.ticker

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, d, name in zip(axes, DIRS, ("forward (source -> target)", "backward (target -> source)")):
        for meth in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r[x], r[f"{d}_{m}"], r[f"{d}_{m}_seed_std"]) for r in rows if r["method"] == meth)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=meth, linestyle="--" if "(other N)" in meth else "-")
        ax.set(xlabel=xlabel, title=name, xscale="log" if log else "linear")
        ax.set_xticks(sorted({r[x] for r in rows}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {m.upper()} (mean ± std over seeds)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}\n{scale_note(cfg.evaluation.scale)}", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)
