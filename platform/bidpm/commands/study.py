"""A study at scale: methods x pairing ratios x seeds [x training fractions], every cell a parallel Ray
Tune trial (one Ray Train run + test-split scoring), with the paper's tables and figures.

    python jobs/study.py --config configs/study_phantom_cpu.yaml [key=value ...]
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/study.py --config configs/study_brats_t1t2.yaml output_dir=/mnt/bidpm/brats_study

The grid is the config's study: section (methods, pairing_ratios, seeds, train_fractions; validated
like every field). Rerunning the same command resumes: finished cells are never retrained, interrupted
ones continue from their checkpoints; a new study.name starts a new study. Outputs, written atomically
under <train.storage_path>/<study.name>/report/ and logged to one MLflow parent run (a child run per
cell): table1.md/.csv (100% paired), table2.md/.csv (study.table2_ratio, 100% values in brackets),
figure5.png/.csv (metric vs paired %), figure7.png/.csv (metric vs NFE), significance.csv, cost.csv,
cells.csv and report.md.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..cli import command_parser, parse_job_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "study")
    cfg, _ = parse_job_args(parser, argv)
    return run(cfg)


def run(cfg: Any, job: str = "study") -> int:
    """Run the grid (``tune.study.run_grid``), then write and print the report. The parent MLflow run
    ends FINISHED (every cell scored), FAILED (cells missing, the report failed) or KILLED (a signal)."""
    from ..prechecks import check_job

    check_job(cfg, job)                      # writable locations, splits: before MLflow, Ray or data
    from ..raycluster import connect_ray
    from ..tune.launch import end_runs
    from ..tune.study import run_grid

    connect_ray()
    from ..tune.nodes import NodeTimeline

    with NodeTimeline() as nodes:            # on an autoscaling cluster: the nodes the cells brought up
        result = run_grid(cfg)
    if nodes.on_cluster:
        print(nodes.format())
    client, parent = result["client"], result["parent_run_id"]
    try:
        if result["missing"]:
            print(f"\n{len(result['missing'])} cell(s) have no scores (failed: see the messages above): "
                  f"{', '.join(result['missing'])}\nrerun the same command to retry them; the report covers the others")
        if not result["cells"]:
            if client is not None:
                client.set_terminated(parent, status="FAILED")
            return 1
        paths = write_report(cfg, result)
        print("\noutputs:")
        for name, p in paths.items():
            print(f"  {name:<14} {p}")
        if client is not None:
            from .. import tracking

            client.set_terminated(parent, status="FAILED" if result["missing"] else "FINISHED")
            print(tracking.where(cfg))
    except BaseException as exc:
        end_runs(client, parent, exc)
        raise
    return 0 if not result["missing"] else 1


def write_report(cfg: Any, result: dict[str, Any]) -> dict[str, str]:
    """Tables, figures, CSVs and report.md under the study folder (atomic writes); printed and logged."""
    import json

    from .. import study_report as R
    from ..data import storage
    from ..evaluation import scale_note

    cells, st = result["cells"], cfg.study
    full, low = max(st.pairing_ratios), (st.table2_ratio if st.table2_ratio is not None else min(st.pairing_ratios))
    t1, t1_rows = R.table(cells, cfg, full)
    t2, t2_rows = R.table(cells, cfg, low, bracket=full) if low != full else ("", [])
    png5, f5 = R.figure5(cells, cfg)
    png7, f7 = R.figure7(cells, cfg, full)
    sig = [s for r in st.pairing_ratios for s in R.significance(cells, cfg, r)]
    cost, cost_rows = R.cost_table(cells, cfg)
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
    files = {"report.md": md.encode(), "table1.md": t1.encode(), "table1.csv": R.to_csv(t1_rows),
             "figure5.png": png5, "figure5.csv": R.to_csv(f5), "figure7.png": png7, "figure7.csv": R.to_csv(f7),
             "significance.csv": R.to_csv(sig), "cost.csv": R.to_csv(cost_rows), "cells.csv": R.to_csv(flat),
             "cells.json": json.dumps([c["cell"] | {"checkpoint": c["checkpoint"]} for c in cells], indent=1).encode()}
    if t2:
        files.update({"table2.md": t2.encode(), "table2.csv": R.to_csv(t2_rows)})
    out = storage.join(result["dir"], "report")
    paths = {}
    for name, data in files.items():
        loc = storage.join(out, name)
        storage.write_bytes_atomic(loc, data)
        paths[name] = loc
    print(f"\n{note}\n\nTable 1 ({100 * full:g}% paired)\n{t1}")
    if t2:
        print(f"\nTable 2 ({100 * low:g}% paired; {100 * full:g}% in brackets)\n{t2}")
    print(f"\nBi-DPM vs the best baseline\n{sig_md}\n\nCost\n{cost}")
    if result["client"] is not None:
        _log(result["client"], result["parent_run_id"], out, files)
    return paths


def _log(client: Any, run_id: str, out: str, files: dict[str, bytes]) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        client.log_artifacts(run_id, tmp, "report")
