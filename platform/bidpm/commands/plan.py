"""Plan a job's GPU memory before launching it: the estimated peak of one training step per worker, for
the config as given and every case the job can train (each N of a search space, each study method), and
whether each fits a card of --gpu-memory-gb. No GPU, no Ray: one training step is traced on fake tensors
(bidpm.plan.memory: within 0.5% of the measured H200 peaks it is calibrated on; torch.compile is estimated
as eager). Exit 2 when a case does not fit, with the fixes (checkpoint_unroll, batch size x grad_accum).

    python jobs/plan.py --config configs/brats_t1t2.yaml --gpu-memory-gb 24
    python jobs/plan.py --config configs/study_brats_t1t2.yaml --job study --gpu-memory-gb 80 --json plan.json
    python jobs/plan.py --config configs/synthrad_brain.yaml method.time_grid=[0,0.5,1] train.checkpoint_unroll=true

Without --gpu-memory-gb the card is train.gpu_memory_gb (the shipped GPU configs name their cluster's 24 GB
cards); with neither, the estimates are printed and nothing is judged.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from ..cli import command_parser, parse_job_args

JOBS = ("train", "tune_steps", "study")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "plan")
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="memory of one GPU in vendor GB (24 for an A10G or L4, 80 for an A100/H100 80GB)")
    parser.add_argument("--job", choices=JOBS, default=None,
                        help="whose cases to plan (default: study if the config has study.methods, else tune_steps)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the plan as JSON (atomically)")
    cfg, args = parse_job_args(parser, argv)
    from ..io.storage import write_bytes_atomic
    from ..plan.gpus import usable_gib
    from ..plan.preflight import make_plan
    from ..tables import fixed_width

    gb = args.gpu_memory_gb or cfg.train.gpu_memory_gb
    if gb is not None and gb <= 0:
        parser.exit(2, f"error: --gpu-memory-gb must be > 0 (got {gb:g})\n")
    job = args.job or ("study" if cfg.study.methods else "tune_steps")
    print(f"planning {job} for {cfg.name}: {cfg.model.kind} at {cfg.data.image_size[0]}x{cfg.data.image_size[1]}, "
          f"batch {cfg.train.batch_size} per worker, {cfg.train.precision}, checkpoint_unroll="
          f"{str(cfg.train.checkpoint_unroll).lower()}" + (f", {gb:g} GB cards ({usable_gib(gb):.1f} GiB usable)" if gb else ""),
          flush=True)
    cases = None
    if job == "study":
        from ..study.memory import study_cases

        cases = study_cases(cfg)
    plan = make_plan(cfg, job, gb, cases=cases)
    rows = [[c.label, f"{c.memory.peak_gib:.1f}" if c.memory else "?", "-" if c.fits is None else ("yes" if c.fits else "NO"),
             "; ".join(c.fixes)] for c in plan.cases]
    print(fixed_width(["case", "peak GiB/worker", "fits", "fixes (estimated peak)"], rows))
    print("per worker: the traced step + Adam state + EMA (+ DDP buckets, accumulated gradients, 1 GiB CUDA workspaces); "
          "torch.compile estimated as eager")
    if args.json:
        write_bytes_atomic(args.json, (json.dumps(plan.as_dict(), indent=2) + "\n").encode())
        print(f"plan written to {args.json}")
    if gb is None:
        print("no GPU memory given (--gpu-memory-gb or train.gpu_memory_gb): estimates only")
        return 0
    return 0 if plan.fits else 2
