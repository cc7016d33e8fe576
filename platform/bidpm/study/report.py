"""A study's report under ``<study folder>/report/``, written atomically and logged to its MLflow parent
run: report.md, Table 1 (100% paired) and Table 2 (``study.table2_ratio``, 100% in brackets) as markdown +
CSV, Figures 5 and 7 as PNG + CSV, significance, cost, and every cell's scores (cells.csv / cells.json).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..config import Config
from ..evaluation import scale_note
from ..io import storage
from . import figures as F
from . import tables as T

__all__ = ["write_report"]


def write_report(cfg: Config, folder: str, cells: list[dict[str, Any]], client: Any = None,
                 parent: Optional[str] = None) -> dict[str, str]:
    """Tables, figures, CSVs and report.md under ``<folder>/report/`` (atomic writes), printed, and logged
    to the parent run when there is one. Returns file name -> location."""
    st = cfg.study
    full, low = max(st.pairing_ratios), (st.table2_ratio if st.table2_ratio is not None else min(st.pairing_ratios))
    t1, t1_rows = T.table(cells, cfg, full)
    t2, t2_rows = T.table(cells, cfg, low, bracket=full) if low != full else ("", [])
    png5, f5 = F.figure5(cells, cfg)
    png7, f7 = F.figure7(cells, cfg, full)
    sig = [s for r in st.pairing_ratios for s in T.significance(cells, cfg, r)]
    cost, cost_rows = T.cost_table(cells, cfg)
    flat = [{"cell": c["cell"]["id"], **c["cell"], "grid": g["label"], "nfe": g["steps"], **g["summary"], **c["cost"]}
            for c in cells for g in c["grids"]]
    sig_md = "\n".join(f"- {100 * s['ratio']:g}% paired, {s['direction']}: {s['bidpm']} - {s['baseline']} = "
                       f"{s['mean_diff']:+.4f} {s['metric'].upper()} (95% CI [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}], "
                       f"Wilcoxon p = {s['wilcoxon_p']:.3g}, {s['images']} images): "
                       f"{'supported' if s['supported'] else 'not supported'}" for s in sig)
    note = (f"{scale_note(cfg.evaluation.scale)}. Cells: a ± b [c] = mean over {len(st.seeds)} seed(s) ± std over "
            f"seeds [per-image spread]. Bi-DPM at its training grid, CycleGAN one step, baselines at their best NFE of "
            f"{st.baseline_nfe} on the test split (which favours them).")
    md = "\n\n".join(x for x in [
        f"# Study {st.name}", note, f"## Table 1: {100 * full:g}% paired\n\n{t1}",
        f"## Table 2: {100 * low:g}% paired ({100 * full:g}% in brackets)\n\n{t2}" if t2 else "",
        "## Figure 5\n\n![figure 5](figure5.png)", f"## Figure 7 ({100 * full:g}% paired)\n\n![figure 7](figure7.png)",
        "## Is Bi-DPM's lead over the best baseline supported?\n\nPaired bootstrap over test images (seed-averaged "
        f"per image, {st.bootstrap_samples} resamples) and Wilcoxon signed-rank test.\n\n{sig_md or '(no Bi-DPM and baseline pair)'}",
        f"## Cost\n\n{cost}"] if x)
    files = {"report.md": md.encode(), "table1.md": t1.encode(), "table1.csv": T.to_csv(t1_rows),
             "figure5.png": png5, "figure5.csv": T.to_csv(f5), "figure7.png": png7, "figure7.csv": T.to_csv(f7),
             "significance.csv": T.to_csv(sig), "cost.csv": T.to_csv(cost_rows), "cells.csv": T.to_csv(flat),
             "cells.json": json.dumps([c["cell"] | {"checkpoint": c["checkpoint"]} for c in cells], indent=1).encode()}
    if t2:
        files.update({"table2.md": t2.encode(), "table2.csv": T.to_csv(t2_rows)})
    out = storage.join(folder, "report")
    paths = {}
    for name, data in files.items():
        loc = storage.join(out, name)
        storage.write_bytes_atomic(loc, data)
        paths[name] = loc
    print(f"\n{note}\n\nTable 1 ({100 * full:g}% paired)\n{t1}")
    if t2:
        print(f"\nTable 2 ({100 * low:g}% paired; {100 * full:g}% in brackets)\n{t2}")
    print(f"\nBi-DPM vs the best baseline\n{sig_md}\n\nCost\n{cost}")
    if client is not None and parent is not None:
        _log(client, parent, files)
    print("\noutputs:")
    for name, p in paths.items():
        print(f"  {name:<14} {p}")
    return paths


def _log(client: Any, run_id: str, files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp, "report")
