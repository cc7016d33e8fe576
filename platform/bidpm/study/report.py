"""A study's report under ``<study folder>/report/``, written atomically and logged to its MLflow parent
run: report.md, Table 1 (100% paired) and Table 2 (``study.table2_ratio``, 100% in brackets) as markdown +
CSV, Figures 5 and 7 as PNG + CSV and significance - for each training fraction - then cost (per method, per
method x pairing ratio and per cell, with device-hours over every attempt) and every cell's scores (cells.csv /
cells.json).
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
from .scaling import scaling_section
from .volumes import volume_table

__all__ = ["write_report"]


def write_report(cfg: Config, folder: str, cells: list[dict[str, Any]], client: Any = None,
                 parent: Optional[str] = None, n_train: Optional[int] = None) -> dict[str, str]:
    """Tables, figures, CSVs and report.md under ``<folder>/report/`` (atomic writes), printed, and logged
    to the parent run when there is one. Returns file name -> location.

    Every training fraction of the study gets its Tables 1-2, Figures 5/7 and significance: the largest
    fraction under the plain names (``table1.md``), each other one with ``_f<percent>`` (``table1_f25.md``);
    every heading names the fraction it shows, so no fraction's report is empty or unnamed. With three or
    more fractions and ``n_train`` (training subjects in the shards), the data-scaling section
    (``study.scaling``): fits, intervals, the held-out check and the subjects needed."""
    st = cfg.study
    full, low = max(st.pairing_ratios), (st.table2_ratio if st.table2_ratio is not None else min(st.pairing_ratios))
    fractions = sorted(set(st.train_fractions), reverse=True)
    sections, files, printed, sig = [], {}, [], []
    for f in fractions:
        block = _fraction_block(cells, cfg, f, full, low, "" if f == fractions[0] else f"_f{100 * f:g}", n_train)
        sections.append(block["md"])
        files.update(block["files"])
        printed.append(block["printed"])
        sig += block["significance"]
    scaling = scaling_section(cells, cfg, n_train) if n_train else None
    if scaling is not None:
        sections.append(f"## Data scaling\n\n{scaling['md']}\n\n![scaling](scaling.png)")
        files.update({"scaling.png": scaling["files"]["scaling.png"], "scaling.csv": T.to_csv(scaling["files"]["scaling.csv"]),
                      "scaling_points.csv": T.to_csv(scaling["files"]["scaling_points.csv"])})
        printed.append(scaling["printed"])
    cost, cost_rows = T.cost_table(cells, cfg)
    per_cell, cell_cost_rows = T.cell_costs(cells)
    cost += (f"\n\nDevice-hours ({T.device_unit(cells)}: wall seconds of each cell's Ray Train fit() x the GPUs - or, "
             f"on CPU workers, CPUs - its workers reserved, summed over every attempt; scoring not counted), per "
             f"method and pairing ratio:\n\n{T.ratio_costs(cells, cfg)}")
    flat = [{"cell": c["cell"]["id"], **c["cell"], "grid": g["label"], "nfe": g["steps"], **g["summary"], **c["cost"]}
            for c in cells for g in c["grids"]]
    note = (f"{scale_note(cfg.evaluation.scale)}. Cells: a ± b [c] = mean over {len(st.seeds)} seed(s) ± std over "
            f"seeds [per-image spread]. Bi-DPM at its training grid, CycleGAN one step, baselines at their best NFE of "
            f"{st.baseline_nfe} on the test split (which favours them). Pairing by {cfg.data.pairing_unit} "
            f"(data.pairing_unit={cfg.data.pairing_unit}: " + ("whole training subjects are paired; each unpaired "
            "subject gives its source or its target slices, never both)" if cfg.data.pairing_unit == "subject" else
            "single slices are paired, so one subject's slices can be on both sides)"))
    md = "\n\n".join([f"# Study {st.name}", note, *sections, f"## Cost\n\n{cost}\n\nPer cell (cost_cells.csv):\n\n{per_cell}"])
    files.update({"report.md": md.encode(), "significance.csv": T.to_csv(sig), "cost.csv": T.to_csv(cost_rows),
                  "cost_cells.csv": T.to_csv(cell_cost_rows),
                  "cells.csv": T.to_csv(flat),
                  "cells.json": json.dumps([c["cell"] | {"checkpoint": c["checkpoint"], "checkpoint_sha256": c.get("checkpoint_sha256")}
                                            for c in cells], indent=1).encode()})
    out = storage.join(folder, "report")
    paths = {}
    for name, data in files.items():
        loc = storage.join(out, name)
        storage.write_bytes_atomic(loc, data)
        paths[name] = loc
    print(f"\n{note}")
    for text in printed:
        print(text)
    print(f"\nCost\n{cost}")
    if client is not None and parent is not None:
        _log(client, parent, files)
    print("\noutputs:")
    for name, p in paths.items():
        print(f"  {name:<14} {p}")
    return paths


def _fraction_block(cells: list[dict[str, Any]], cfg: Config, f: float, full: float, low: float, suffix: str,
                    n_train: Optional[int] = None) -> dict[str, Any]:
    """One training fraction's tables, figures and significance: markdown, files, console text; with
    subject pairing and ``n_train``, Figure 5 again against the number of paired subjects."""
    st = cfg.study
    of = "" if f == 1.0 else f", {100 * f:g}% of the training subjects"
    t1, t1_rows = T.table(cells, cfg, full, fraction=f)
    t2, t2_rows = T.table(cells, cfg, low, bracket=full, fraction=f) if low != full else ("", [])
    png5, f5 = F.figure5(cells, cfg, f)
    by_subjects = bool(n_train) and cfg.data.pairing_unit == "subject" and len(st.pairing_ratios) > 1
    png7, f7 = F.figure7(cells, cfg, full, f)
    sig = [s for r in st.pairing_ratios for s in T.significance(cells, cfg, r, f)]
    vt, v_rows = volume_table(cells, cfg, full, f) if st.volume_metrics else ("", [])
    ot, o_rows = volume_table(cells, cfg, full, f, "original") if st.volume_metrics else ("", [])
    sig_md = "\n".join(f"- {100 * s['ratio']:g}% paired, {s['direction']}: {s['bidpm']} - {s['baseline']} = "
                       f"{s['mean_diff']:+.4f} {s['metric'].upper()} (95% CI [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}], "
                       f"Wilcoxon p = {s['wilcoxon_p']:.3g}, {s['images']} images): "
                       f"{'supported' if s['supported'] else 'not supported'}" for s in sig)
    md = "\n\n".join(x for x in [
        f"## Table 1: {100 * full:g}% paired{of}\n\n{t1}",
        f"## Table 2: {100 * low:g}% paired ({100 * full:g}% in brackets){of}\n\n{t2}" if t2 else "",
        f"## Figure 5{of}\n\n![figure 5](figure5{suffix}.png)",
        f"## Quality vs paired subjects{of}\n\n![paired subjects](paired_subjects{suffix}.png)" if by_subjects else "",
        f"## Figure 7 ({100 * full:g}% paired{of})\n\n![figure 7](figure7{suffix}.png)",
        f"## Volumes: 3-D and inter-slice consistency ({100 * full:g}% paired{of})\n\n{vt}" if vt else "",
        f"## Original volumes ({100 * full:g}% paired{of})\n\n{ot}" if ot else "",
        f"## Is Bi-DPM's lead over the best baseline supported?{of and ' (' + of[2:] + ')'}\n\nPaired bootstrap over test "
        f"images (seed-averaged per image, {st.bootstrap_samples} resamples) and Wilcoxon signed-rank test.\n\n"
        f"{sig_md or '(no Bi-DPM and baseline pair)'}"] if x)
    files = {f"table1{suffix}.md": t1.encode(), f"table1{suffix}.csv": T.to_csv(t1_rows),
             f"figure5{suffix}.png": png5, f"figure5{suffix}.csv": T.to_csv(f5),
             f"figure7{suffix}.png": png7, f"figure7{suffix}.csv": T.to_csv(f7)}
    if by_subjects:
        png_s, rows_s = F.paired_subjects_figure(f5, cfg, f, n_train)
        files.update({f"paired_subjects{suffix}.png": png_s, f"paired_subjects{suffix}.csv": T.to_csv(rows_s)})
    if t2:
        files.update({f"table2{suffix}.md": t2.encode(), f"table2{suffix}.csv": T.to_csv(t2_rows)})
    if vt:
        files.update({f"volumes{suffix}.md": vt.encode(), f"volumes{suffix}.csv": T.to_csv(v_rows)})
    if o_rows:
        files.update({f"original_volumes{suffix}.md": ot.encode(), f"original_volumes{suffix}.csv": T.to_csv(o_rows)})
    printed = f"\nTable 1 ({100 * full:g}% paired{of})\n{t1}"
    if t2:
        printed += f"\n\nTable 2 ({100 * low:g}% paired; {100 * full:g}% in brackets{of})\n{t2}"
    if vt:
        printed += f"\n\nVolumes ({100 * full:g}% paired{of})\n{vt}"
    if ot:
        printed += f"\n\nOriginal volumes ({100 * full:g}% paired{of})\n{ot}"
    printed += f"\n\nBi-DPM vs the best baseline{of}\n{sig_md}"
    return {"md": md, "files": files, "printed": printed, "significance": sig}


def _log(client: Any, run_id: str, files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp, "report")
