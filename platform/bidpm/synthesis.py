"""Synthesis with a trained velocity field: 2-D slice batches and whole 3-D volumes, both directions.

Paper Algorithm 2 (the Euler unroll, in ``bidpm.method``) on slices; paper 3.2.4 for volumes: "slice
each image along the transverse plane ... each slice is transferred from one modality to the other,
and the slices are then reassembled in sequence". A volume goes through exactly the ingest's steps
and then their inverses (``bidpm.data``), so a model sees at synthesis what it saw in training:

    NIfTI -> RAS (``bidpm.io.read_volume``) -> normalise the INPUT modality (CT window / MR percentiles
    in a mask, ``bidpm.data.normalise``) -> every transverse slice (RAS axis 2) -> resize to
    ``data.image_size`` -> Euler steps -> resize back -> OUTPUT modality's units -> original voxel
    order and affine (``bidpm.data.rebuild_volume``) -> ``save_nifti`` (atomic, fresh header).

Choices (the paper does not say):

* Every transverse slice is synthesised, not only the central / in-mask ones the shards hold, so the
  output has the input's full shape. Slices outside the training range (air, the neck) are still
  mapped; they are mostly background and the model has seen background in every training slice.
* Output units. CT: Hounsfield units through the inverse of ``data.ct_window`` (exact inside the
  window; values outside it are clipped, as in ingest). MR has no absolute unit and there is no ground
  truth to borrow a scale from, so [-1, 1] maps to the fixed range ``MR_OUTPUT_RANGE`` = [0, 1000]:
  skull-stripped background (-1) lands on exactly 0 as in BraTS, and the phantoms' MR is written on
  the same x1000 scale. Callers that want another scale pass ``output_params``.
* MR input percentiles are taken inside ``mask`` as at ingest. Without a mask file the mask is the
  nonzero voxels (the ingest's rule for skull-stripped data; for data with a noisy background, pass the
  body mask, e.g. SynthRAD's ``mask.nii.gz``, or the percentiles include air).
* Output voxels are float32 (HU are not rounded to int16: no second quantisation on top of the model's).

Imports only torch / numpy / nibabel (through ``bidpm.io`` / ``bidpm.data``'s pure modules).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config import Config
from .data.geometry import rebuild_volume
from .data.normalise import ct_params, mr_params, normalise
from .data.slicing import resize_slices
from .io.nifti import NiftiError, Volume, load_nifti, read_volume, save_nifti
from .io.nifti_guard import human_bytes, too_large
from .method.solver import Direction, check_grid, euler_integrate
from .model import runtime

MR_OUTPUT_RANGE = (0.0, 1000.0)
Precision = Literal["fp32", "bf16", "fp16"]

__all__ = [
    "MR_OUTPUT_RANGE", "SynthesisError", "input_params", "modalities_for", "output_params",
    "synthesize_file", "synthesize_slices", "synthesize_volume",
]


class SynthesisError(ValueError):
    """Input that cannot be synthesised as asked; the message names the file/field and the fix."""


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else fallback


def synthesize_slices(
    model: nn.Module,
    x: Tensor,
    direction: Direction,
    grid: Sequence[float],
    batch_size: int = 32,
    precision: Precision = "fp32",
) -> Tensor:
    """Algorithm 2 on a stack of slices with the velocity field ``model``: Euler steps on ``grid``
    (``method.solver``), in batches, under ``torch.inference_mode`` (no autograd bookkeeping), in eval mode.

    x: (B, C, H, W) in [-1, 1] (sources for ``forward``, targets for ``backward``); returns (B, C, H, W)
    float32 on x's device. Runs on the model's device (x is moved there batch by batch, so a large stack
    never sits on the GPU at once).
    ``precision`` bf16/fp16 autocasts the network on its device (CPU too, ``model.runtime.autocast``);
    the Euler sums stay float32 because ``x + u dt`` promotes to x's dtype.
    """
    if direction not in ("forward", "backward"):
        raise SynthesisError(f"direction: {direction!r}; use 'forward' (source->target) or 'backward' (target->source)")
    if batch_size < 1:
        raise SynthesisError(f"batch_size must be >= 1, got {batch_size}")
    g = check_grid(grid, "synthesis grid")
    device = _model_device(model, x.device)
    autocast = runtime.autocast(precision, device)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode(), autocast:
            # inputs pinned once and copied asynchronously; outputs stay on the device until the last batch,
            # so the GPU never waits for a per-batch copy back to the host
            src = x.float().pin_memory() if device.type == "cuda" and x.device.type == "cpu" else x
            for start in range(0, x.shape[0], batch_size):
                xb = src[start:start + batch_size].to(device=device, dtype=torch.float32, non_blocking=True)
                out.append(euler_integrate(model, xb, g, direction).float())
    finally:
        model.train(was_training)
    if not out:
        return x.new_zeros(x.shape, dtype=torch.float32)
    return torch.cat(out).to(x.device)


# --- volumes --------------------------------------------------------------------------------------
def modalities_for(cfg: Config, direction: Direction) -> tuple[str, str]:
    """(input modality, output modality): forward = source -> target, backward = target -> source."""
    src, tgt = cfg.data.modalities
    if direction == "forward":
        return src, tgt
    if direction == "backward":
        return tgt, src
    raise SynthesisError(f"direction: {direction!r}; use 'forward' (source->target) or 'backward' (target->source)")


def input_params(cfg: Config, modality: str, vol: Volume, mask: np.ndarray, name: str = "input") -> dict:
    """Normalisation parameters of the input volume, by the ingest's rule (``bidpm.data.volume._params``)."""
    if modality in cfg.data.ct_modalities:
        return ct_params(cfg.data.ct_window)
    try:
        return mr_params(vol.data, mask, cfg.data.mr_percentiles)
    except ValueError as exc:
        raise SynthesisError(f"{name}: cannot normalise the {modality} volume ({exc}); pass a body mask that covers the anatomy") from None


def output_params(cfg: Config, modality: str) -> dict:
    """[-1, 1] -> output units: the CT window for CT modalities, else ``MR_OUTPUT_RANGE`` (module doc)."""
    if modality in cfg.data.ct_modalities:
        return ct_params(cfg.data.ct_window)
    return {"kind": "mr_fixed", "low": MR_OUTPUT_RANGE[0], "high": MR_OUTPUT_RANGE[1]}


def _as_volume(volume: str | os.PathLike | Volume, max_bytes: int) -> tuple[Volume, str]:
    if isinstance(volume, Volume):
        return volume, "<volume>"
    return load_nifti(volume, max_bytes), str(volume)


def _load_mask(path: str | os.PathLike, max_bytes: int) -> Volume:
    """A mask NIfTI, reoriented to RAS like the input (an all-ones mask is valid, so no constant check)."""
    p = Path(path)
    if not p.is_file():
        raise NiftiError(str(p), "missing_file", "mask file does not exist", "check the --mask path")
    if p.stat().st_size > max_bytes:
        raise too_large(str(p), f"the file is {human_bytes(p.stat().st_size)}", max_bytes)
    return read_volume(p.read_bytes(), str(p), check_constant=False, max_bytes=max_bytes)


def _as_mask(mask: Optional[str | os.PathLike | Volume | np.ndarray], vol: Volume, name: str, atol: float,
             max_bytes: int) -> np.ndarray:
    """(X, Y, Z) bool in RAS order. None -> nonzero voxels of the input (the ingest's no-mask rule)."""
    if mask is None:
        return vol.data != 0
    if isinstance(mask, np.ndarray):
        m = mask
    else:
        mv = mask if isinstance(mask, Volume) else _load_mask(mask, max_bytes)
        if mv.data.shape != vol.data.shape or not np.allclose(mv.affine, vol.affine, atol=atol):
            raise SynthesisError(f"{name}: mask {mask if not isinstance(mask, Volume) else '<volume>'} has shape "
                                 f"{mv.original_shape} / another affine than the input's {vol.original_shape}; "
                                 "give the mask on the input's grid")
        m = mv.data
    m = np.asarray(m) > 0
    if m.shape != vol.data.shape:
        raise SynthesisError(f"{name}: mask shape {m.shape} != RAS volume shape {vol.data.shape}")
    return m


def synthesize_volume(
    model: nn.Module,
    volume: str | os.PathLike | Volume,
    cfg: Config,
    direction: Direction = "forward",
    *,
    grid: Optional[Sequence[float]] = None,
    mask: Optional[str | os.PathLike | Volume | np.ndarray] = None,
    out_params: Optional[dict] = None,
    batch_size: int = 32,
    precision: Precision = "fp32",
    output_path: Optional[str | os.PathLike] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One NIfTI volume of the input modality -> the synthetic volume of the other (paper 3.2.4).

    ``model``: the velocity field (``TrainedModel.net``); ``grid`` None = the training grid
    ``cfg.method.time_grid``. ``volume``: a path or a ``bidpm.io.Volume`` (already in RAS). ``cfg``: the model's config (its
    ``data`` section fixes modalities, normalisation and ``image_size``). ``mask``: optional (X, Y, Z)
    array in RAS order, or a mask NIfTI on the input's grid (MR inputs only). ``out_params``: override
    of ``output_params(cfg, output modality)`` ({"low", "high"}: what -1 and +1 map to).

    Returns (data (X, Y, Z) float32 in the file's ORIGINAL voxel order and the output modality's units,
    affine 4x4 = the input file's affine); with ``output_path`` also writes it (atomically). A synthesis
    with non-finite voxels (NaN, inf: an fp16 overflow, a broken checkpoint) is a ``SynthesisError`` naming
    the volume, and nothing is written.
    """
    vol, name = _as_volume(volume, cfg.data.max_volume_bytes)
    in_mod, out_mod = modalities_for(cfg, direction)
    if in_mod in cfg.data.ct_modalities:
        p_in = ct_params(cfg.data.ct_window)  # a fixed window: no mask needed
    else:
        p_in = input_params(cfg, in_mod, vol, _as_mask(mask, vol, name, cfg.data.geometry_atol, cfg.data.max_volume_bytes), name)
    p_out = out_params or output_params(cfg, out_mod)
    if cfg.model.in_channels != 1:
        raise SynthesisError(f"model.in_channels is {cfg.model.in_channels}; volume synthesis feeds one channel per transverse slice")

    depth = vol.data.shape[2]
    # (X, Y, Z) -> every transverse slice (Z, X, Y) -> normalised -> (Z, H, W), as slice_table does
    x = resize_slices(normalise(np.moveaxis(vol.data, 2, 0), p_in), cfg.data.image_size)
    y = synthesize_slices(model, torch.from_numpy(np.clip(x, -1.0, 1.0))[:, None], direction,
                          cfg.method.time_grid if grid is None else grid, batch_size, precision)[:, 0].numpy()
    bad = ~np.isfinite(y)
    if bad.any():                       # np.clip keeps NaN, so no later step would notice; fp16 can overflow
        slices = sorted({int(z) for z in np.nonzero(bad)[0]})
        raise SynthesisError(f"{name}: the model produced {int(bad.sum())} non-finite voxel(s) in {len(slices)} slice(s) "
                             f"(transverse slices {slices[:8]}{' ...' if len(slices) > 8 else ''}); nothing was written. "
                             f"Fix: synthesise in fp32 (--precision / evaluation.precision), or check the model's checkpoint")
    geometry = {
        "shape": list(vol.data.shape),
        "slices": list(range(depth)),
        "affine": vol.affine,
        "original_axcodes": tuple(vol.original_axcodes),
        "normalisation": {"output": p_out},
    }
    data, affine = rebuild_volume(y, geometry, role="output")
    if tuple(data.shape) != tuple(vol.original_shape):  # from_ras is the exact inverse of the read
        raise AssertionError(f"rebuilt shape {data.shape} != input shape {vol.original_shape}")
    if not np.allclose(affine, vol.original_affine, atol=1e-4):
        raise AssertionError(f"rebuilt affine differs from the input's:\n{affine}\n{vol.original_affine}")
    affine = vol.original_affine.copy()  # equal up to float round-off; keep the file's own numbers
    if output_path is not None:
        save_nifti(output_path, data, affine)
    return data, affine


def synthesize_file(
    model: nn.Module,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    cfg: Config,
    direction: Direction = "forward",
    **kwargs,
) -> Path:
    """``synthesize_volume`` + ``save_nifti`` (temp name, then rename); returns the written path."""
    synthesize_volume(model, input_path, cfg, direction, output_path=output_path, **kwargs)
    return Path(output_path)
