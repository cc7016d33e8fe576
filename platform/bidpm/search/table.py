"""The search's trial tables, for the console and the study record: the live table while trials run
(``SearchReporter``) and, at the end, one row per trial at its best epoch (``trial_row``). Rows are
plain dicts, so a finished search read back from ``study.json`` prints the same table.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..objective import Objective
from ..tables import fixed_width
from ..tune.reporter import TrialTableReporter

__all__ = ["SearchReporter", "best_row", "count_line", "format_progress", "format_table", "trial_cells", "trial_row"]


# ------------------------------------------------------------------------------------------ final table
FINAL_COLUMNS = (
    ("trial", "trial"), ("N", "n_steps"), ("grid", "time_grid"), ("w_n", "step_weights"), ("lambda_u", "lambda_unpaired"),
    ("kernel", "mmd_kernel"), ("fwd SSIM", "val/fwd_ssim_mean"), ("bwd SSIM", "val/bwd_ssim_mean"),
    ("fwd PSNR", "val/fwd_psnr_mean"), ("bwd PSNR", "val/bwd_psnr_mean"), ("objective", "objective"),
    ("epochs", "epochs"), ("device-h", "device_hours"), ("status", "status"),
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
    Cost (``bidpm.tune.cost``): the last report's running total over every attempt - ``device_hours`` of
    ``device`` (GPU/CPU), ``train_s`` wall seconds - and that report's ``time_total_s`` (Tune's, last attempt only).
    """
    best = Objective(metric, mode).best(history) or {}    # the epoch the MLflow callback picks too
    last = max((h for h in history if isinstance(h.get("cost/device_hours"), (int, float))
                and math.isfinite(h["cost/device_hours"])), key=lambda h: h["cost/device_hours"], default={})
    epochs = max((_epoch(h) for h in history), default=0)
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
        "device_hours": last.get("cost/device_hours"), "device": last.get("cost/device"),
        "devices": last.get("cost/devices"), "train_s": last.get("cost/train_s"), "time_total_s": last.get("time_total_s"),
    }
    for key in ("val/fwd_ssim_mean", "val/bwd_ssim_mean", "val/fwd_psnr_mean", "val/bwd_psnr_mean"):
        row[key] = best.get(key)
    return row


def _epoch(result: Mapping[str, Any]) -> int:
    """The epoch a result reports (``epoch``), else Tune's iteration: a trial restored after a driver kill
    may report its stored last epoch again (search.trial.finished_run), which is no new iteration."""
    v = result.get("epoch")
    if not isinstance(v, (int, float)) or v != v:
        v = result.get("training_iteration") or 0
    return int(v)


def best_row(rows: Iterable[Mapping[str, Any]], mode: str) -> Optional[Mapping[str, Any]]:
    """The best trial with a checkpoint (ties: the first row)."""
    return Objective("objective", mode).best(r for r in rows if r.get("checkpoint_path"))


def format_table(rows: Sequence[Mapping[str, Any]], best_trial: Optional[str] = None) -> str:
    """The final table; the best trial is marked with '*'; the cost column is named by its unit (GPU-h / CPU-h)."""
    body = [[_fmt(r.get(k)) + ("*" if c == "trial" and r.get("trial") == best_trial else "") for c, k in FINAL_COLUMNS]
            for r in rows]
    kinds = {r.get("device") for r in rows} - {None}
    unit = f"{kinds.pop()}-h" if len(kinds) == 1 else "device-h"
    return fixed_width([unit if c == "device-h" else c for c, _ in FINAL_COLUMNS], body)


# ------------------------------------------------------------------------------------------- live table
LIVE_COLUMNS = ("trial", "N", "grid", "lambda_u", "kernel", "fwd SSIM", "bwd SSIM", "epochs", "status")
_STATUS = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused", "ERROR": "error"}


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _status(info: Mapping[str, Any], epochs: Optional[int], max_epochs: Optional[int]) -> str:
    """TERMINATED -> finished / stopped (ASHA stopped it before ``max_epochs``) / done (unknown)."""
    s = str(info.get("status", "PENDING"))
    if s in ("RUNNING", "PENDING") and info.get("note"):
        return str(info["note"])               # e.g. "waiting for 1 GPU" (the stall watchdog)
    if s != "TERMINATED":
        return _STATUS.get(s, s.lower())
    if max_epochs is None:
        return "done"
    return "finished" if (epochs or 0) >= max_epochs else "stopped"


def trial_cells(info: Mapping[str, Any], max_epochs: Optional[int] = None) -> list[str]:
    """One row. ``info``: {"trial", "status" (Ray's name), "config" (dotted keys), "result" (latest)}."""
    cfg, res = info.get("config") or {}, info.get("result") or {}
    grid = list(cfg.get("method.time_grid") or [])
    lam = cfg.get("method.lambda_unpaired")
    epochs = res.get("training_iteration")
    return [
        str(info.get("trial", "?")),
        str(len(grid) - 1) if grid else "-",
        "[" + ",".join(f"{t:.3g}" for t in grid) + "]" if grid else "-",
        f"{lam:.3g}" if isinstance(lam, (int, float)) else "-",
        str(cfg.get("method.mmd_kernel") or "") if lam else "",  # kernel is unused when lambda_u = 0
        _num(res.get("val/fwd_ssim_mean")),
        _num(res.get("val/bwd_ssim_mean")),
        _num(epochs),
        _status(info, epochs, max_epochs),
    ]


def count_line(trials: Sequence[Mapping[str, Any]], total: Optional[int] = None) -> str:
    """'trials: X done, Y running, Z pending (of N)'; trials the searcher has not created yet are pending."""
    n = {s: sum(1 for t in trials if t.get("status") == s) for s in ("TERMINATED", "ERROR", "RUNNING")}
    total = max(total or 0, len(trials))
    pending = total - sum(n.values())
    err = f", {n['ERROR']} errored" if n["ERROR"] else ""
    return f"trials: {n['TERMINATED']} done{err}, {n['RUNNING']} running, {pending} pending (of {total})"


def format_progress(trials: Sequence[Mapping[str, Any]], total: Optional[int] = None, max_rows: int = 0,
                    max_epochs: Optional[int] = None) -> str:
    """Fixed-width table + count line. ``max_rows`` > 0: unfinished trials and the latest finished ones."""
    shown = list(trials)
    if 0 < max_rows < len(shown):
        finished = [t for t in shown if t.get("status") in ("TERMINATED", "ERROR")]
        room = max(max_rows - (len(shown) - len(finished)), 0)
        hidden = {id(t) for t in finished[:len(finished) - room]}
        shown = [t for t in shown if id(t) not in hidden]
    out = [fixed_width(LIVE_COLUMNS, [trial_cells(t, max_epochs) for t in shown])]
    if len(shown) < len(trials):
        out.append(f"({len(trials) - len(shown)} earlier finished trials not shown)")
    return "\n".join(out + [count_line(trials, total)])


class SearchReporter(TrialTableReporter):
    """The live table of a search (N, grid, lambda_u, kernel, validation SSIM, epochs, status)."""

    @classmethod
    def for_config(cls, cfg: Any) -> "SearchReporter":
        return cls(max_epochs=cfg.train.epochs, total=cfg.tune.num_samples)

    def format(self, trials: Sequence[Mapping[str, Any]]) -> str:
        return format_progress(trials, self.total, self.max_rows, self.max_epochs)
