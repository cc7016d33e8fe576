"""Synthesise NIfTI volumes of the other modality with a trained Bi-DPM model (paper 3.2.4, Algorithm 2).

    python jobs/synthesize.py --checkpoint outputs/quickstart/ray_results/quickstart/checkpoint_000002 \\
        --input outputs/quickstart/phantoms/BraTS2021_00000/BraTS2021_00000_t1.nii.gz --output outputs/synth
    python jobs/synthesize.py --config configs/quickstart.yaml --model-uri models:/bidpm-quickstart@champion \\
        --input 'outputs/quickstart/phantoms/*/*_t2.nii.gz' --direction backward --steps 2 --output outputs/synth

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

import glob
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import job_parser, parse_job_args, run_main  # noqa: E402
from bidpm.config import ConfigError  # noqa: E402
from bidpm.data.layouts import NIFTI_SUFFIXES  # noqa: E402
from bidpm.model_source import load_model, pick_device  # noqa: E402


def parse_grid(steps: Optional[int], grid: Optional[str]) -> Optional[list[float]]:
    """--steps N -> uniform grid; --grid 0,0.5,1 -> that grid; neither -> None (the training grid)."""
    from bidpm.method import check_grid, uniform_grid

    try:
        if steps is not None:
            return uniform_grid(steps)
        if grid is not None:
            return check_grid([float(v) for v in grid.replace(" ", "").strip("[]").split(",")], "--grid")
    except ValueError as exc:
        raise ConfigError(f"{'--steps' if steps is not None else '--grid'}: {exc}") from None
    return None


# --- inputs and outputs ---------------------------------------------------------------------------
def nifti_stem(path: Path) -> str:
    name = path.name
    for s in NIFTI_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return path.stem


def modality_token(path: Path) -> str:
    """The name's last ``_``/``-``/``.`` separated token, lower case: ``BraTS_001_t1`` -> ``t1``, ``mr`` -> ``mr``."""
    stem = nifti_stem(path).replace("-", "_").replace(".", "_")
    return stem.rsplit("_", 1)[-1].lower()


def resolve_inputs(specs: Sequence[str], in_mod: str, out_mod: str, direction: str) -> list[Path]:
    """Files, folders (NIfTIs named for ``in_mod`` below them) and globs -> sorted unique files.

    A file whose name says it is the OUTPUT modality is refused (wrong --direction is the usual cause).
    """
    found: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            cands = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(NIFTI_SUFFIXES))
            hits = [f for f in cands if modality_token(f) == in_mod]
            if not hits:
                names = sorted({modality_token(f) for f in cands})
                raise ConfigError(f"--input {p}: no NIfTI named for the input modality {in_mod!r} below this folder "
                                  f"(found modalities {names or 'none'}); pass files explicitly or check --direction")
            found += hits
        elif p.is_file():
            found.append(p)
        elif any(c in spec for c in "*?["):
            hits = [Path(f) for f in sorted(glob.glob(spec, recursive=True)) if Path(f).is_file()]
            if not hits:
                raise ConfigError(f"--input {spec}: the pattern matches no file")
            found += hits
        else:
            raise ConfigError(f"--input {spec}: no such file or folder")
    for f in found:
        if not f.name.endswith(NIFTI_SUFFIXES):
            raise ConfigError(f"--input {f}: not a .nii / .nii.gz file")
        if modality_token(f) == out_mod and in_mod != out_mod:
            other = "backward" if direction == "forward" else "forward"
            raise ConfigError(f"--input {f}: its name says {out_mod!r}, the modality this direction PRODUCES "
                              f"({direction}: {in_mod} -> {out_mod}); use --direction {other} or check the file")
    unique = sorted({f.resolve() for f in found})
    return unique


def output_paths(inputs: Sequence[Path], output_dir: Path, out_mod: str) -> list[Path]:
    """Mirror each input's folder below the inputs' common folder (SynthRAD subjects all hold ``mr.nii.gz``)."""
    base = Path(_common(inputs))
    return [output_dir / f.parent.relative_to(base) / f"{nifti_stem(f)}_synth-{out_mod}.nii.gz" for f in inputs]


def _common(paths: Sequence[Path]) -> str:
    import os

    return os.path.commonpath([str(p.parent) for p in paths])


def find_mask(path: Path, explicit: Optional[str], n_inputs: int) -> Optional[Path]:
    """--mask FILE (one input only), else a ``mask.nii.gz`` beside the input (the SynthRAD layout)."""
    if explicit:
        if n_inputs != 1:
            raise ConfigError("--mask: give it with a single --input file (folders use each subject's mask.nii.gz)")
        return Path(explicit)
    for name in ("mask.nii.gz", "mask.nii"):
        if (path.parent / name).is_file() and path.name != name:
            return path.parent / name
    return None


def main() -> int:
    parser = job_parser(__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="training checkpoint folder (holds state.pt)")
    which.add_argument("--model-uri", help="registered/logged model, e.g. models:/bidpm@champion")
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
    cfg, args = parse_job_args(__doc__, parser=parser)

    from tqdm import tqdm  # heavy imports after argument parsing, so usage errors are instant

    from bidpm.io import NiftiError
    from bidpm.synthesis import SynthesisError, modalities_for, output_params, sampling_method, synthesize_volume

    explicit = args.config is not None or any(o.startswith("data.") for o in args.overrides)
    grid_pts = parse_grid(args.steps, args.grid)
    device = pick_device(args.device)
    net, model_cfg, what = load_model(args.checkpoint, args.model_uri, cfg, explicit, device)
    in_mod, out_mod = modalities_for(model_cfg, args.direction)
    inputs = resolve_inputs(args.input, in_mod, out_mod, args.direction)
    outputs = output_paths(inputs, Path(args.output), out_mod)
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
    method = sampling_method(model_cfg.method).to(device)
    shown_grid = grid_pts or model_cfg.method.time_grid
    print(f"{what}: {in_mod} -> {out_mod} ({args.direction}), grid {shown_grid} ({len(shown_grid) - 1} steps), "
          f"{model_cfg.data.image_size[0]}x{model_cfg.data.image_size[1]} slices on {device}; {len(inputs)} volume(s)")
    written = []
    for src, dst in tqdm(list(zip(inputs, outputs)), desc="volumes", unit="vol", file=sys.stderr):
        try:
            synthesize_volume(net, method, src, model_cfg, args.direction, grid=grid_pts,
                              mask=find_mask(src, args.mask, len(inputs)), out_params=out_p,
                              batch_size=args.batch_size, precision=model_cfg.train.precision, output_path=dst)
        except (NiftiError, SynthesisError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        written.append(dst)
        tqdm.write(f"wrote {dst}  (from {src})", file=sys.stdout)
    units = "HU" if out_mod in model_cfg.data.ct_modalities else f"[-1, 1] -> [{out_p['low']:g}, {out_p['high']:g}]"
    print(f"{len(written)} synthetic {out_mod} volume(s) in {Path(args.output).resolve()} (units: {units})")
    return 0


if __name__ == "__main__":
    run_main(main)
