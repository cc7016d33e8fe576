"""Evaluate a model on a split in both directions at several Euler step counts (paper 3.3, Fig. 7),
and per volume in 3-D (paper Table 5; SynthRAD2023's HU metrics where a direction produces CT).

    python jobs/evaluate.py --checkpoint outputs/quickstart/ray_results/quickstart/checkpoint_000002 \\
        --steps 1,2,5,10 --json outputs/eval.json --plot outputs/eval.png
    python jobs/evaluate.py --config configs/quickstart.yaml --model-uri models:/bidpm-quickstart@champion
    python jobs/evaluate.py --config configs/pareto_phantom_cpu.yaml --nfe 2    # models:/<registered name>@champion-nfe2

Rows: uniform grids with N = 1, 2, 5, 10 steps (--steps) plus the model's own training grid; columns:
SSIM, PSNR and MAE (mean +- std over slices) for forward (source -> target) and backward (target ->
source) synthesis against the real slice of the other modality, inside the mask, on the value scale of
evaluation.scale (default: images mapped to [0, 1], data range 1) - the same scorer, keys and numbers as
training validation and registry promotion (bidpm.evaluation). The volume table stacks each subject's
slices in slice order (training grid) and scores them in 3-D; --no-volumes skips it. --volumes also
scores the ORIGINAL volumes as the SynthRAD challenges do: each subject of the split synthesised from its
own input file at its own geometry and compared with its original file of the other modality and its
mask (SynthRAD2023 and 2025 metrics in HU where a direction produces CT; 3-D SSIM/PSNR/MAE and inter-slice
consistency for every direction; bidpm.evaluation.original). It reads the ingest's input files (data.root)
and needs the pseudonym salt the shards were made with.

The split is read with pyarrow, one row group at a time (no Ray start-up). The shards are those of the
model's own data config unless --config / data.* overrides name others (then their image size and
modalities must match the model's). Device, batch size and precision: evaluation.* (or the flags).
"""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from ..cli import add_model_args, command_parser, config_given, load_model_arg, parse_job_args
from ..config import ConfigError


def parse_steps(text: str) -> list[int]:
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--steps {text!r}: expected comma-separated integers, e.g. 1,2,5,10") from None
    if not steps or min(steps) < 1:
        raise ConfigError(f"--steps {text!r}: step counts must be >= 1")
    return steps


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "evaluate")
    add_model_args(parser)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="default test")
    parser.add_argument("--steps", default="1,2,5,10", help="comma-separated N for uniform grids (default 1,2,5,10)")
    parser.add_argument("--json", help="write the results (summaries and per-image values) as JSON here ('-' = stdout)")
    parser.add_argument("--plot", help="write a PNG of quality vs steps here")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per batch (default evaluation.batch_size)")
    parser.add_argument("--max-slices", type=int, default=None, help="evaluate only the first N slices (smoke runs)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ... (default evaluation.device)")
    parser.add_argument("--no-volumes", action="store_true", help="skip the per-volume 3-D table of the shards' slices")
    parser.add_argument("--volumes", action="store_true",
                        help="also score the original volumes (each input file synthesised at its own geometry; SynthRAD "
                             "metrics in HU where a direction produces CT)")
    parser.add_argument("--max-volumes", type=int, default=None, help="with --volumes: only the first N subjects")
    cfg, args = parse_job_args(parser, argv)
    steps = parse_steps(args.steps)
    return run_evaluation(cfg, args, steps)


def run_evaluation(cfg, args, steps: list[int]) -> int:
    """Load the model, score it (``evaluation.evaluate_split``), print the tables, write JSON / plot."""
    from ..evaluation import evaluate_split, grids_for
    from ..io.storage import write_bytes_atomic
    from ..report import format_grid_table, format_volume_table, grid_rows, plot_steps
    from ..trained import pick_device

    explicit = config_given(args)
    device = pick_device(args.device or cfg.evaluation.device)
    model = load_model_arg(args, cfg, device)
    # data settings: the model's own unless given; scoring settings (evaluation.*): always this command's
    data_cfg = (cfg if explicit else model.cfg).model_copy(update={"evaluation": cfg.evaluation})
    if args.max_slices is not None and args.max_slices < 1:
        raise ConfigError(f"--max-slices {args.max_slices}: must be >= 1")
    print(f"{model.origin}: scoring the {args.split} split of {data_cfg.shards_path} on {device} ...", file=sys.stderr)
    ev = evaluate_split(model, data_cfg, args.split, grids_for(steps, model.grid), batch_size=args.batch_size,
                        max_rows=args.max_slices, volumes=not args.no_volumes)
    src, tgt = model.cfg.data.modalities
    print(f"{model.origin} on the {args.split} split: {len(ev.ids)} slices, fwd = {src}->{tgt}, bwd = {tgt}->{src}")
    print(format_grid_table(ev))
    if ev.volumes:
        print()
        print(format_volume_table(ev))
    original = None
    if args.volumes:
        from ..evaluation.original import score_original_volumes
        from ..report import format_original_table

        print(f"scoring the original volumes of the {args.split} split ...", file=sys.stderr)
        original = score_original_volumes(model.net, data_cfg.model_copy(update={"method": model.cfg.method}), args.split,
                                          batch_size=args.batch_size or cfg.evaluation.batch_size,
                                          precision=cfg.evaluation.precision or model.cfg.train.precision,
                                          max_subjects=args.max_volumes,
                                          print_fn=lambda line: print(line, file=sys.stderr))
        print()
        print(format_original_table(original))
    result = {"model": model.origin, "split": args.split, "slices": len(ev.ids), "modalities": [src, tgt],
              "scale": ev.scale, "training_grid": model.grid, "rows": grid_rows(ev), "summary": ev.summary(),
              "ids": ev.ids, "per_image": {g.spec.label: {d: {m: v.tolist() for m, v in per.items()}
                                                          for d, per in g.values.items()} for g in ev.grids}}
    if original is not None:
        result["original_volumes"] = {"subjects": original.subjects, "summary": original.summary(),
                                      "skipped": original.skipped,
                                      "values": {d: {m: v.tolist() for m, v in per.items()} for d, per in original.values.items()}}
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        write_bytes_atomic(args.json, json.dumps(result, indent=2).encode())
        print(f"wrote {args.json}")
    if args.plot:
        plot_steps(ev, args.plot, f"{model.origin} - {args.split} split, {len(ev.ids)} slices ({src}<->{tgt})")
        print(f"wrote {args.plot}")
    return 0
