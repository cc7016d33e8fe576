"""NIfTI files named on a command line: files, folders and globs -> the volumes to synthesise.

Names follow the layouts' conventions (``data.layouts``): a file's modality is its name's last token
(``BraTS_001_t1.nii.gz`` -> ``t1``, SynthRAD's ``mr.nii.gz`` -> ``mr``), so a folder expands to the
NIfTIs named for the input modality below it. Outputs mirror the inputs' folders below their common
folder (SynthRAD subjects all hold ``mr.nii.gz``); a subject's ``mask.nii.gz`` is found beside it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional, Sequence

from ..config import ConfigError
from .layouts import NIFTI_SUFFIXES, nifti_stem

__all__ = ["find_mask", "modality_token", "output_paths", "resolve_inputs"]


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


def output_paths(inputs: Sequence[Path], output_dir: Path, out_mod: str, overwrite: bool = False) -> list[Path]:
    """Mirror each input's folder below the inputs' common folder (SynthRAD subjects all hold ``mr.nii.gz``).

    Refused before any work: two inputs that map to one output (``x_t1.nii`` and ``x_t1.nii.gz``), and
    outputs that exist already unless ``overwrite`` (``--overwrite``): a rerun never replaces results silently."""
    base = Path(_common(inputs))
    outs = [output_dir / f.parent.relative_to(base) / f"{nifti_stem(f)}_synth-{out_mod}.nii.gz" for f in inputs]
    first: dict[Path, Path] = {}
    for src, dst in zip(inputs, outs):
        if dst in first:
            raise ConfigError(f"--input: {first[dst]} and {src} would both be written to {dst}; "
                              f"fix: synthesise them in two runs with different --output folders, or rename one")
        first[dst] = src
    existing = [d for d in outs if d.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise ConfigError(f"--output: {existing[0]}{more} exist already; fix: pass --overwrite to replace them, "
                          f"or choose another --output folder")
    return outs


def _common(paths: Sequence[Path]) -> str:
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
