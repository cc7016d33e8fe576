"""One subject pair -> one Parquet slice table. The unit of work of an ingest task (no Ray here).

Steps (paper 3.2): read both volumes (and the mask) -> RAS -> check the pair's geometry ->
build the mask -> normalisation parameters per volume -> pick transverse slices -> normalise ->
resize (images anti-aliased, mask nearest) -> a table of K rows. Memory: one pair of volumes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bidpm.io.nifti import NiftiError, Volume, from_memory_order, memory_order, read_volume
from bidpm.io.nifti_guard import DEFAULT_MAX_BYTES, human_bytes, too_large

from ..io import storage
from .layouts import Problem, SubjectFiles
from .normalise import ct_params, mr_params, normalise
from .slicing import central_slices, mask_slices, resize_slices
from .tensor_columns import encode_images


class VolumeError(ValueError):
    """A subject cannot be ingested; carries the subject and the ``Problem`` (kind, file, fix)."""

    def __init__(self, subject: str, problem: Problem):
        self.subject, self.problem = subject, problem
        super().__init__(problem.message(subject))


@dataclass(frozen=True)
class SliceSettings:
    """The data-config fields a task needs (small and picklable; no Config object in workers)."""

    source_modality: str
    target_modality: str
    image_size: tuple[int, int]
    slice_mode: str
    num_slices: int
    mr_percentiles: tuple[float, float]
    ct_window: tuple[float, float]
    ct_modalities: tuple[str, ...]
    geometry_atol: float
    row_group_rows: int
    max_volume_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_data_config(cls, d) -> "SliceSettings":
        src, tgt = d.modalities
        return cls(src, tgt, tuple(d.image_size), d.slice_mode, d.num_slices, tuple(d.mr_percentiles),
                   tuple(d.ct_window), tuple(d.ct_modalities), d.geometry_atol, d.row_group_rows, d.max_volume_bytes)


def _read(subject: str, role: str, location: Optional[str], max_bytes: int, *, is_mask: bool = False) -> Volume:
    if location is None:
        raise VolumeError(subject, Problem("missing_file", role, "?", "no file given", "provide the file"))
    try:
        size = storage.info(location).size
        if size is not None and size > max_bytes:  # before reading a byte of it
            raise too_large(location, f"the file is {human_bytes(size)}", max_bytes)
        raw = storage.read_bytes(location)
    except FileNotFoundError:
        raise VolumeError(subject, Problem("missing_file", role, location, "file does not exist", "restore the file or set data.skip_bad=true")) from None
    except OSError as exc:
        raise VolumeError(subject, Problem("unreadable", role, location, f"cannot be read ({exc})", "check permissions / storage access")) from None
    except NiftiError as exc:
        raise VolumeError(subject, Problem(exc.kind, role, location, exc.problem, exc.fix)) from None
    try:
        return read_volume(raw, location, check_constant=not is_mask, max_bytes=max_bytes)
    except NiftiError as exc:
        raise VolumeError(subject, Problem(exc.kind, role, location, exc.problem, exc.fix)) from None


def _check_geometry(subject: str, ref: Volume, other: Volume, role: str, location: str, atol: float) -> None:
    if ref.data.shape != other.data.shape:
        raise VolumeError(subject, Problem(
            "geometry_mismatch", role, location, f"shape {other.original_shape} does not match the source's {ref.original_shape}",
            "resample the pair onto one grid (the pair must be co-registered)"))
    diff = float(np.abs(ref.affine - other.affine).max())
    if diff > atol:
        raise VolumeError(subject, Problem(
            "geometry_mismatch", role, location, f"affine differs from the source's by up to {diff:.4g} mm (tolerance data.geometry_atol={atol})",
            "co-register / resample the pair onto one grid, or raise data.geometry_atol if the difference is rounding"))


def nonzero_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a != 0) | (b != 0)`` computed in ``a``'s buffer order (see ``memory_order``), returned as a
    view in ``a``'s axis order."""
    am, bm = memory_order(a, b)
    m = np.not_equal(am, 0)
    m |= np.not_equal(bm, 0)
    return from_memory_order(a, m)


def load_pair(rec: SubjectFiles, s: SliceSettings) -> tuple[Volume, Volume, np.ndarray, str]:
    """(source, target, mask (X, Y, Z) bool, mask origin "file" | "nonzero"); raises VolumeError."""
    if rec.problem is not None:
        raise VolumeError(rec.subject, rec.problem)
    src = _read(rec.subject, "source", rec.source, s.max_volume_bytes)
    tgt = _read(rec.subject, "target", rec.target, s.max_volume_bytes)
    _check_geometry(rec.subject, src, tgt, "target", rec.target or "?", s.geometry_atol)
    if rec.mask is not None:
        m = _read(rec.subject, "mask", rec.mask, s.max_volume_bytes, is_mask=True)
        _check_geometry(rec.subject, src, m, "mask", rec.mask, s.geometry_atol)
        mask, origin = m.data > 0, "file"
        if not mask.any():
            raise VolumeError(rec.subject, Problem("empty_mask", "mask", rec.mask, "mask is empty (no voxel > 0)", "fix the mask or set data.skip_bad=true"))
    else:  # skull-stripped data (BraTS): background is exactly 0 in both images
        mask, origin = nonzero_mask(src.data, tgt.data), "nonzero"
    return src, tgt, mask, origin


def _params(subject: str, role: str, location: str, modality: str, vol: Volume, mask: np.ndarray, s: SliceSettings) -> dict:
    if modality in s.ct_modalities:
        return ct_params(s.ct_window)
    try:
        return mr_params(vol.data, mask, s.mr_percentiles)
    except ValueError as exc:
        raise VolumeError(subject, Problem("constant", role, location, f"cannot normalise: {exc}", "check the volume and its mask")) from None


def slice_table(rec: SubjectFiles, pseudonym: str, split: str, s: SliceSettings) -> tuple[pa.Table, dict]:
    """Rows for one subject + its volume metadata (geometry and normalisation, for the manifest)."""
    src, tgt, mask, origin = load_pair(rec, s)
    depth = src.data.shape[2]
    if s.slice_mode == "central":
        try:
            idx = central_slices(depth, s.num_slices)
        except ValueError as exc:
            raise VolumeError(rec.subject, Problem(
                "too_few_slices", "source", rec.source or "?", str(exc),
                "lower data.num_slices, use data.slice_mode=mask, or set data.skip_bad=true")) from None
    else:
        idx = mask_slices(mask)
    p_src = _params(rec.subject, "source", rec.source or "?", s.source_modality, src, mask, s)
    p_tgt = _params(rec.subject, "target", rec.target or "?", s.target_modality, tgt, mask, s)
    # (X, Y, Z)[..., idx] -> (K, X, Y) -> (K, H, W); a run of slices is a view (no gather copy)
    sel = slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)) else idx
    take = lambda v: np.moveaxis(v[:, :, sel], 2, 0)  # noqa: E731
    x_src = resize_slices(normalise(take(src.data), p_src), s.image_size)
    x_tgt = resize_slices(normalise(take(tgt.data), p_tgt), s.image_size)
    x_mask = resize_slices(take(mask).astype(np.float32, order="C"), s.image_size, is_mask=True)
    k = len(idx)
    table = pa.table({
        "subject": pa.array([pseudonym] * k, pa.string()),
        "slice": pa.array(idx.astype(np.int32), pa.int32()),
        "split": pa.array([split] * k, pa.string()),
        "source": pa.FixedShapeTensorArray.from_numpy_ndarray(np.clip(x_src, -1.0, 1.0, out=x_src)),  # fresh arrays
        "target": pa.FixedShapeTensorArray.from_numpy_ndarray(np.clip(x_tgt, -1.0, 1.0, out=x_tgt)),
        "mask": pa.FixedShapeTensorArray.from_numpy_ndarray(x_mask),
    })
    meta = {
        "split": split,
        "rows": k,
        "slices": [int(i) for i in idx],
        "shape": [int(n) for n in src.data.shape],
        "affine": np.round(src.affine, 6).tolist(),
        "spacing": [round(float(v), 6) for v in src.spacing],
        "original_axcodes": "".join(src.original_axcodes),
        "original_shape": [int(n) for n in src.original_shape],
        "original_affine": np.round(src.original_affine, 6).tolist(),
        "image_size": [int(v) for v in s.image_size],
        "mask": origin,
        "normalisation": {"source": p_src, "target": p_tgt},
    }
    return table, meta


def write_table(table: pa.Table, location: str, row_group_rows: int) -> tuple[int, str]:
    """Parquet bytes -> ``location`` atomically; returns (rows, sha256 of the file bytes).

    Image columns go to disk as fixed-size binary (``tensor_columns``: 2x faster to write and to read
    than Parquet's nested-list form of a tensor). Dictionary encoding and min/max statistics only
    for the small scalar columns: on the image columns pyarrow's default dictionary attempt made the
    write 4x slower and the file 1.5x larger, and image statistics help no reader.
    """
    table = encode_images(table)
    binary = [f.name for f in table.schema if pa.types.is_fixed_size_binary(f.type)]
    scalar = [f.name for f in table.schema if f.name not in binary]
    strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_rows, use_dictionary=strings, write_statistics=scalar)
    data = sink.getvalue().to_pybytes()
    storage.write_bytes_atomic(location, data)
    return table.num_rows, hashlib.sha256(data).hexdigest()
