"""Scores on the ORIGINAL volumes, the way the SynthRAD challenges score: each subject of a split is
synthesised from its own input file at its own geometry (``synthesis.synthesize_volume``: every
transverse slice, resized back, the output modality's units, the file's voxel grid) and compared with
its original file of the other modality and its mask at their own resolution - not the shards' selected,
resized, window-clipped slices. numpy / torch / nibabel only (no Ray, no MLflow).

Per subject and direction:

- where the direction produces CT: SynthRAD2023's MAE (HU) / PSNR / SSIM (``metrics.synthrad_metrics``)
  and SynthRAD2025's MAE / PSNR / masked 3-D MS-SSIM (``metrics.synthrad2025_metrics``) on the original CT
  in HU against the synthesis in HU (the inverse of ``data.ct_window``; values beyond the window are
  not synthesisable, so a CT whose bone exceeds the window's top keeps an error there), computed in the
  file's own voxel order as the challenges' code reads the files (SimpleITK; its axis order is the reverse,
  which these metrics do not see). Not in RAS: SynthRAD2025's MS-SSIM downsampling averages voxel 2k with
  2k - 1, so a mirrored volume scores differently (0.530 in the file's LPS order, 0.542 mirrored to RAS, on
  the unit test's phantom);
- every direction: 3-D SSIM / PSNR / MAE (``metrics.volume_metrics``) and the inter-slice consistency
  (``metrics.consistency``) on ``evaluation.scale``, both volumes first mapped to [-1, 1] by the ingest's
  rule for the output modality (CT: the window; MR: the reference's own percentiles in the mask, as the
  shards hold it; the synthesis from ``synthesis.MR_OUTPUT_RANGE``). MR has no absolute unit, so this is
  the only comparison that means the same for every MR file.

The mask: the subject's mask file (SynthRAD's ``mask.nii.gz``) when the layout has one, else the input's
nonzero voxels (the ingest's rule for skull-stripped data). Subjects come from the split's shard files
(their pseudonyms) matched to the layout's files through the pseudonym salt, which this process must
have, as for the ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..config import Config
from ..data.normalise import normalise
from ..io.nifti import from_ras, load_nifti, to_ras
from ..metrics.clinical import synthrad_metrics, volume_metrics
from ..metrics.consistency import inter_slice_consistency
from ..metrics.synthrad2025 import synthrad2025_metrics
from ..synthesis import _as_mask, input_params, modalities_for, output_params, synthesize_volume
from .scale import SCALES
from .scores import SHORT

__all__ = ["ORIGINAL_CONVENTION", "OriginalScores", "split_subject_files", "score_original_volumes"]

ORIGINAL_CONVENTION = (
    "original volumes: each subject synthesised from its own file at its own geometry and compared with its "
    "original file and mask at their resolution; SR2023 / SR2025 = SynthRAD's metrics in HU where a direction "
    "produces CT; 3-D SSIM/PSNR/MAE and SAG/COR_SSIM, TP_GRAD_MAE on the value scale after the ingest's "
    "normalisation of each volume (bidpm.evaluation.original)")


@dataclass
class OriginalScores:
    """Per-subject values: ``values["fwd"]["hu_mae"]`` is an (S,) array over ``subjects`` (NaN: not scored)."""

    split: str
    subjects: list[str]
    values: dict[str, dict[str, np.ndarray]]
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """``<split>/<d>_orig_<metric>_mean`` / ``_std`` over subjects (NaN values left out) + ``<split>/orig_volumes``."""
        out: dict[str, float] = {}
        for d, per in self.values.items():
            for m, v in per.items():
                v = v[np.isfinite(v)]
                out[f"{self.split}/{d}_orig_{m}_mean"] = float(v.mean()) if v.size else float("nan")
                out[f"{self.split}/{d}_orig_{m}_std"] = float(v.std()) if v.size else float("nan")
        out[f"{self.split}/orig_volumes"] = float(len(self.subjects))
        return out


def split_subject_files(cfg: Config, split: str) -> list[tuple[str, Any]]:
    """(pseudonym, ``SubjectFiles``) of every subject in ``split``'s shards, in pseudonym order; a
    ``ValueError`` naming the fix when the salt or the input files are not available here."""
    from ..data.layouts import discover
    from ..data.manifest import input_root_location, pseudonym
    from ..data.readers import split_entries

    d = cfg.data
    wanted = {e["subject"] for e in split_entries(cfg, split)}
    salt = d.known_salt() if d.pseudonymise else ""
    if salt is None:
        raise ValueError("scoring the original volumes needs the pseudonym salt the shards were made with "
                         "(data.pseudonym_salt_file or BIDPM_PSEUDONYM_SALT), to find each subject's files")
    src, tgt = d.modalities
    found = {pseudonym(s.subject, salt, d.pseudonymise): s for s in
             discover(d.reader_layout, input_root_location(cfg), src, tgt, d.reader_region,
                      allow_outside_root=d.allow_outside_root)}
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{len(missing)} subject(s) of the {split} split have no input files under {input_root_location(cfg)} "
                         f"(e.g. {missing[0]}): score the original volumes where the ingest's inputs are")
    return [(p, found[p]) for p in sorted(wanted)]


def _unit(x: np.ndarray, scale: str) -> tuple[np.ndarray, float]:
    a, b, rng = SCALES[scale]
    return np.asarray(x, dtype=np.float64) * a + b, rng


def score_subject(net: Any, cfg: Config, files: Any, direction: str, grid: Sequence[float], batch_size: int,
                  precision: str) -> dict[str, float]:
    """Every original-volume metric of one subject in one direction (module doc)."""
    in_mod, out_mod = modalities_for(cfg, direction)
    in_path, ref_path = (files.source, files.target) if direction == "forward" else (files.target, files.source)
    max_bytes = cfg.data.max_volume_bytes
    vol_in, ref = load_nifti(in_path, max_bytes), load_nifti(ref_path, max_bytes)
    if ref.data.shape != vol_in.data.shape or not np.allclose(ref.affine, vol_in.affine, atol=cfg.data.geometry_atol):
        raise ValueError(f"{ref_path}: another grid than {in_path} (shape {ref.original_shape} vs {vol_in.original_shape})")
    mask = _as_mask(files.mask, vol_in, in_path, cfg.data.geometry_atol, max_bytes)        # RAS (X, Y, Z) bool
    sct_file, _ = synthesize_volume(net, vol_in, cfg, direction, grid=grid, mask=mask, batch_size=batch_size,
                                    precision=precision)                                     # the file's voxel order
    sct = to_ras(sct_file, tuple(vol_in.original_axcodes))
    out: dict[str, float] = {}
    if out_mod in cfg.data.ct_modalities:           # SynthRAD's metrics in the file's voxel order (module doc)
        axcodes = tuple(vol_in.original_axcodes)
        ct_file = from_ras(ref.data, ref.affine, axcodes)[0]
        mask_file = from_ras(mask, ref.affine, axcodes)[0]
        out.update({f"hu_{k}": v for k, v in synthrad_metrics(ct_file, sct_file, mask_file).items()})
        out.update({f"hu25_{k}": v for k, v in synthrad2025_metrics(ct_file, sct_file, mask_file).items()})
    pred_n = normalise(sct, output_params(cfg, out_mod))                   # the synthesis' own map, back to [-1, 1]
    ref_n = normalise(ref.data, input_params(cfg, out_mod, ref, mask, ref_path))
    p, rng = _unit(np.moveaxis(pred_n, 2, 0), cfg.evaluation.scale)      # (Z, X, Y): transverse slices first
    r, _ = _unit(np.moveaxis(ref_n, 2, 0), cfg.evaluation.scale)
    m = np.moveaxis(mask, 2, 0)
    out.update({f"vol_{k}": v for k, v in volume_metrics(p, r, rng, m).items()})
    out.update(inter_slice_consistency(p, r, rng, m))
    return out


def score_original_volumes(net: Any, cfg: Config, split: str = "test", grid: Optional[Sequence[float]] = None, *,
                           batch_size: int = 32, precision: str = "fp32", max_subjects: Optional[int] = None,
                           print_fn: Callable[[str], Any] = lambda s: None) -> OriginalScores:
    """Score ``net`` (a velocity field or generator, ``TrainedModel.net``) of config ``cfg`` on the original
    volumes of ``split`` at ``grid`` (None: the training grid). A subject that cannot be scored (a file
    that fails the guards, a mask too small for the 3-D window) is NaN and named in ``skipped``."""
    subjects = split_subject_files(cfg, split)[:max_subjects]
    grid = list(cfg.method.time_grid if grid is None else grid)
    rows: dict[str, list[dict[str, float]]] = {d: [] for d in SHORT.values()}
    skipped: dict[str, str] = {}
    for i, (name, files) in enumerate(subjects):
        for direction, d in SHORT.items():
            try:
                rows[d].append(score_subject(net, cfg, files, direction, grid, batch_size, precision))
            except ValueError as exc:
                skipped[name] = f"{direction}: {exc}"
                rows[d].append({})
        print_fn(f"  original volume {i + 1}/{len(subjects)}: {name}")
    values = {d: {k: np.array([r.get(k, np.nan) for r in per], dtype=np.float64)
                  for k in dict.fromkeys(k for r in per for k in r)} for d, per in rows.items()}
    return OriginalScores(split, [n for n, _ in subjects], values, skipped)
