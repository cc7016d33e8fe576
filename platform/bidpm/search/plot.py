"""The search's summary figure: the objective per trial with the running best, and quality vs N."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..io.storage import write_bytes_atomic
from ..objective import Objective
from ..plots import png_bytes, pyplot

__all__ = ["plot_summary"]


def plot_summary(rows: Sequence[Mapping[str, Any]], metric: str, mode: str, path: str | Path) -> Path:
    """Two panels: objective per trial (with the running best) and quality vs N (both directions)."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ys = [r.get("objective") for r in rows]
    xs = list(range(1, len(rows) + 1))
    a.scatter(xs, [float("nan") if y is None else y for y in ys], c=["C3" if r.get("status") == "stopped" else "C0" for r in rows])
    run, cur, objective = [], None, Objective(metric, mode)
    for y in ys:
        cur = y if objective.better(y, cur) else cur
        run.append(float("nan") if cur is None else cur)
    a.step(xs, run, where="post", color="k", lw=1, label="best so far")
    a.set(xlabel="trial (launch order; red = stopped early by ASHA)", ylabel=metric, title="objective vs trial")
    a.legend()
    for key, label, m in (("val/fwd_ssim_mean", "forward", "o"), ("val/bwd_ssim_mean", "backward", "s")):
        pts = [(r["n_steps"], r[key]) for r in rows if r.get(key) is not None and r.get("n_steps")]
        if pts:
            b.scatter(*zip(*pts), marker=m, label=label, alpha=0.7)
    b.set(xlabel="N (steps)", ylabel="validation SSIM (best epoch)", title="quality vs N")
    ns = sorted({r["n_steps"] for r in rows if r.get("n_steps")})
    if ns:
        b.set_xticks(ns)
    b.legend()
    fig.tight_layout()
    write_bytes_atomic(str(path), png_bytes(fig, dpi=100))      # unique temp name + rename: never a partial PNG
    return Path(path)
