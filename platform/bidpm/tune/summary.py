"""The study's summary: one row per trial, a terminal table, and two plots (objective vs trial,
quality vs N). Rows are plain dicts so the same code prints a fresh study and a finished one read
back from its ``study.json``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..data.storage import write_bytes_atomic
from ..objective import Objective

COLUMNS = (
    ("trial", "trial"), ("N", "n_steps"), ("grid", "time_grid"), ("w_n", "step_weights"), ("lambda_u", "lambda_unpaired"),
    ("kernel", "mmd_kernel"), ("fwd SSIM", "val/fwd_ssim_mean"), ("bwd SSIM", "val/bwd_ssim_mean"),
    ("fwd PSNR", "val/fwd_psnr_mean"), ("bwd PSNR", "val/bwd_psnr_mean"), ("objective", "objective"),
    ("epochs", "epochs"), ("status", "status"),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.3f}")
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + "]"
    return str(v)


def trial_row(trial: str, overrides: Mapping[str, Any], history: Sequence[Mapping[str, Any]], metric: str, mode: str,
              max_epochs: int, error: bool) -> dict[str, Any]:
    """One trial: its searched settings and the metrics of its best epoch by ``metric``.

    history: the trial's reported results in order (dicts with ``metric`` and the val/* keys).
    status: finished (all epochs), stopped (ASHA early stop), error.
    """
    best = Objective(metric, mode).best(history) or {}    # the epoch the MLflow callback picks too
    epochs = max((int(h.get("training_iteration", 0)) for h in history), default=0)
    grid = list(overrides.get("method.time_grid", []))
    row: dict[str, Any] = {
        "trial": trial,
        "n_steps": len(grid) - 1 if grid else None,
        "time_grid": grid,
        "step_weights": list(overrides.get("method.step_weights", [])),
        "lambda_unpaired": overrides.get("method.lambda_unpaired"),
        "mmd_kernel": overrides.get("method.mmd_kernel") if overrides.get("method.lambda_unpaired") else None,
        "objective": best.get(metric),
        "epochs": epochs,
        "status": "error" if error else ("finished" if epochs >= max_epochs else "stopped"),
        "checkpoint_path": best.get("checkpoint_path"),
        "overrides": dict(overrides),
    }
    for key in ("val/fwd_ssim_mean", "val/bwd_ssim_mean", "val/fwd_psnr_mean", "val/bwd_psnr_mean"):
        row[key] = best.get(key)
    return row


def best_row(rows: Iterable[Mapping[str, Any]], mode: str) -> Optional[Mapping[str, Any]]:
    """The best trial with a checkpoint (ties: the first row)."""
    return Objective("objective", mode).best(r for r in rows if r.get("checkpoint_path"))


def format_table(rows: Sequence[Mapping[str, Any]], best_trial: Optional[str] = None) -> str:
    """Fixed-width table; the best trial is marked with '*'."""
    head = [c for c, _ in COLUMNS]
    body = [[_fmt(r.get(k)) + ("*" if c == "trial" and r.get("trial") == best_trial else "") for c, k in COLUMNS]
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def plot_summary(rows: Sequence[Mapping[str, Any]], metric: str, mode: str, path: str | Path) -> Path:
    """Two panels: objective per trial (with the running best) and quality vs N (both directions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = Path(path)
    write_bytes_atomic(str(out), buf.getvalue())       # unique temp name + rename: never a partial PNG
    return out
