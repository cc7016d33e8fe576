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
    """Run the study (``bidpm.study.run.run_study``: cells, retries, report). Exit 0 when every cell was
    scored, 1 when some are missing (the report covers the others; a rerun retries them)."""
    from ..prechecks import check_job

    check_job(cfg, job)                      # writable locations, splits: before MLflow, Ray or data
    from ..raycluster import connect_ray
    from ..raycluster.nodes import NodeTimeline
    from ..study.run import run_study

    connect_ray()
    with NodeTimeline() as nodes:            # on an autoscaling cluster: the nodes the cells brought up
        result = run_study(cfg)
    if nodes.on_cluster:
        print(nodes.format())
    if cfg.tracking.enabled:
        from .. import tracking

        print(tracking.where(cfg))
    return 0 if result.cells and not result.missing else 1
