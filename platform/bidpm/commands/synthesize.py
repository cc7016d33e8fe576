"""Synthesise NIfTI volumes of the other modality with a trained Bi-DPM model (paper 3.2.4, Algorithm 2).

    python jobs/synthesize.py --checkpoint outputs/quickstart/ray_results/quickstart/checkpoint_000002 \\
        --input outputs/quickstart/phantoms/BraTS2021_00000/BraTS2021_00000_t1.nii.gz --output outputs/synth
    python jobs/synthesize.py --config configs/quickstart.yaml --model-uri models:/bidpm-quickstart@champion \\
        --input 'outputs/quickstart/phantoms/*/*_t2.nii.gz' --direction backward --steps 2 --output outputs/synth
    python jobs/synthesize.py --config configs/pareto_phantom_cpu.yaml --nfe 1 \\
        --input 'outputs/pareto_phantom/phantoms/*/*_t1.nii.gz' --output outputs/synth-1step   # champion-nfe1

--input takes a file, a folder (every NIfTI below it whose name ends in the input modality, e.g.
``*_t1.nii.gz`` or ``mr.nii.gz``) or a quoted glob; repeat it for more. ``forward`` maps the model's
source modality to its target (data.modalities), ``backward`` the reverse. Each volume is sliced along
the transverse plane, every slice goes through the Euler steps, and the result is written with the
input's shape and affine as ``<output>/<path below the inputs' common folder>/<stem>_synth-<modality>.nii.gz``.

The data settings (modalities, normalisation, image size) always come from the model's own config
(stored in the checkpoint); ``--config``/overrides are for the tracking URI (``--model-uri``) and are
checked against the model (a different data.image_size or modality pair is an error, not a resize).
Weights: the EMA copy (what validation and the registry score).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cli import add_model_args, command_parser, load_model_arg, parse_job_args
from ..config import ConfigError


def parse_grid(steps: Optional[int], grid: Optional[str]) -> Optional[list[float]]:
    """--steps N -> uniform grid; --grid 0,0.5,1 -> that grid; neither -> None (the training grid)."""
    from ..method.solver import check_grid, uniform_grid

    try:
        if steps is not None:
            return uniform_grid(steps)
        if grid is not None:
            return check_grid([float(v) for v in grid.replace(" ", "").strip("[]").split(",")], "--grid")
    except ValueError as exc:
        raise ConfigError(f"{'--steps' if steps is not None else '--grid'}: {exc}") from None
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(__doc__, "synthesize")
    add_model_args(parser)
    parser.add_argument("--input", "-i", action="append", required=True, help="NIfTI file, folder or quoted glob (repeatable)")
    parser.add_argument("--output", "-o", required=True, help="folder for the synthetic volumes")
    parser.add_argument("--direction", choices=("forward", "backward"), default="forward",
                        help="forward: source -> target modality; backward: target -> source (default forward)")
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--steps", type=int, help="N uniform Euler steps (grid [0, 1/N, ..., 1]); default: the training grid")
    grid.add_argument("--grid", help="explicit time grid, e.g. 0,0.5,1")
    parser.add_argument("--mask", help="body mask NIfTI for MR percentile normalisation (single input only)")
    parser.add_argument("--mr-range", help="LOW,HIGH that MR outputs map [-1, 1] to (default 0,1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="slices per forward pass (default 32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already (default: refuse)")
    cfg, args = parse_job_args(parser, argv)
    return run_synthesis(cfg, args)


def run_synthesis(cfg, args) -> int:
    """Load the model, resolve inputs and outputs, synthesise every volume (written atomically)."""
    from tqdm import tqdm  # heavy imports after argument parsing, so usage errors are instant

    from ..data.inputs import find_mask, output_paths, resolve_inputs
    from ..synthesis import modalities_for, output_params, synthesize_volume
    from ..trained import pick_device

    grid_pts = parse_grid(args.steps, args.grid)
    device = pick_device(args.device)
    model = load_model_arg(args, cfg, device)
    model_cfg, what = model.cfg, model.origin
    in_mod, out_mod = modalities_for(model_cfg, args.direction)
    inputs = resolve_inputs(args.input, in_mod, out_mod, args.direction)
    outputs = output_paths(inputs, Path(args.output), out_mod, getattr(args, "overwrite", False))
    out_p = output_params(model_cfg, out_mod)
    if args.mr_range:
        if out_mod in model_cfg.data.ct_modalities:
            raise ConfigError(f"--mr-range: the output modality {out_mod!r} is CT (Hounsfield units via data.ct_window)")
        try:
            low, high = (float(v) for v in args.mr_range.split(","))
        except ValueError:
            raise ConfigError(f"--mr-range {args.mr_range!r}: expected LOW,HIGH, e.g. 0,1000") from None
        if not high > low:
            raise ConfigError(f"--mr-range {args.mr_range!r}: HIGH must exceed LOW")
        out_p = {"kind": "mr_fixed", "low": low, "high": high}
    shown_grid = grid_pts or model_cfg.method.time_grid
    print(f"{what}: {in_mod} -> {out_mod} ({args.direction}), grid {shown_grid} ({len(shown_grid) - 1} steps), "
          f"{model_cfg.data.image_size[0]}x{model_cfg.data.image_size[1]} slices on {device}; {len(inputs)} volume(s)")
    written = []
    for src, dst in tqdm(list(zip(inputs, outputs)), desc="volumes", unit="vol", file=sys.stderr):
        synthesize_volume(model.net, src, model_cfg, args.direction, grid=grid_pts,
                          mask=find_mask(src, args.mask, len(inputs)), out_params=out_p,
                          batch_size=args.batch_size, precision=model_cfg.train.precision, output_path=dst)
        written.append(dst)
        tqdm.write(f"wrote {dst}  (from {src})", file=sys.stdout)
    units = "HU" if out_mod in model_cfg.data.ct_modalities else f"[-1, 1] -> [{out_p['low']:g}, {out_p['high']:g}]"
    print(f"{len(written)} synthetic {out_mod} volume(s) in {Path(args.output).resolve()} (units: {units})")
    return 0
