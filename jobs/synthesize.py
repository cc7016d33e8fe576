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
import json
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from bidpm.cli import job_parser, parse_job_args, run_main  # noqa: E402
from bidpm.config import Config, ConfigError, config_from_dict  # noqa: E402
from bidpm.data.layouts import NIFTI_SUFFIXES  # noqa: E402



# --- the model ------------------------------------------------------------------------------------
def checkpoint_from_model_uri(model_uri: str, cfg: Config, workdir: Path):
    """``models:/<name>@<alias>`` (or ``/<version>``, ``runs:/...``) -> (EMA net, the model's Config).

    Downloads the logged ``BidpmPyfunc`` model, loads it with ``mlflow.pyfunc.load_model`` (checks it
    is a bidpm model) and takes its network; the model's config is the ``config.json`` its checkpoint
    artifact carries. Tracking URI: ``cfg.mlflow_uri`` (``tracking.tracking_uri`` / MLFLOW_TRACKING_URI /
    the SQLite file in ``output_dir``).
    """
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from bidpm.tracking import BidpmPyfunc

    mlflow.set_tracking_uri(cfg.mlflow_uri)
    mlflow.set_registry_uri(cfg.mlflow_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(workdir)))
    except (MlflowException, OSError) as exc:
        raise ConfigError(
            f"--model-uri {model_uri}: cannot be fetched from the tracking store {cfg.mlflow_uri} "
            f"({str(exc).splitlines()[0]}); check the name/alias (`mlflow models` / the MLflow UI) and "
            f"tracking.tracking_uri (pass the training config with --config)"
        ) from None
    meta = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
    ck_rel = (((meta.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}).get("checkpoint", {}).get("path")
    if not ck_rel or not (local / ck_rel / "config.json").is_file():
        raise ConfigError(f"--model-uri {model_uri}: not a bidpm model (no checkpoint artifact in its MLmodel); "
                          "register models with jobs/tune_steps.py / bidpm.tracking.log_model")
    impl = mlflow.pyfunc.load_model(str(local)).unwrap_python_model()
    if not isinstance(impl, BidpmPyfunc):
        raise ConfigError(f"--model-uri {model_uri}: holds a {type(impl).__name__}, not a bidpm model (BidpmPyfunc)")
    model_cfg = config_from_dict(json.loads((local / ck_rel / "config.json").read_text()), origin=f"{model_uri} config.json")
    return impl.net, model_cfg


def load_model(args, cfg: Config, explicit_config: bool, device: str):
    """(EMA net on ``device``, the model's Config, a description) from --checkpoint or --model-uri."""
    if args.checkpoint:
        from bidpm.train.checkpoint import load_checkpoint_model

        ck = Path(args.checkpoint)
        if not ck.exists():
            raise ConfigError(f"--checkpoint {ck}: does not exist; pass a checkpoint folder holding state.pt "
                              "(<output_dir>/<train.storage_path>/<run_name>/checkpoint_*)")
        try:
            _, net, model_cfg = load_checkpoint_model(ck)
        except (FileNotFoundError, ValueError) as exc:  # load_checkpoint's own messages name the fix
            raise ConfigError(f"--checkpoint {ck}: {exc}") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise ConfigError(f"--checkpoint {ck}: not a readable bidpm checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); pass the checkpoint_* folder or its state.pt") from None
        what = f"checkpoint {ck}"
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bidpm-model-"))
        net, model_cfg = checkpoint_from_model_uri(args.model_uri, cfg, workdir)
        what = f"model {args.model_uri}"
    if explicit_config:
        check_compatible(model_cfg, cfg, what)
    return net.to(device).eval(), model_cfg, what


def check_compatible(model_cfg: Config, cfg: Config, what: str) -> None:
    """A config given on the command line must describe the same data as the model was trained on."""
    if list(model_cfg.data.image_size) != list(cfg.data.image_size):
        raise ConfigError(
            f"{what} was trained on {model_cfg.data.image_size[0]}x{model_cfg.data.image_size[1]} slices but the config "
            f"says data.image_size={cfg.data.image_size}; drop the override / use the training config "
            "(synthesis always resizes to the model's own size)"
        )
    if model_cfg.data.modalities != cfg.data.modalities:
        raise ConfigError(
            f"{what} maps {model_cfg.data.modalities[0]}<->{model_cfg.data.modalities[1]} but the config names "
            f"{cfg.data.modalities[0]}<->{cfg.data.modalities[1]}; use the training config or another model"
        )


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


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


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
    net, model_cfg, what = load_model(args, cfg, explicit, device)
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
