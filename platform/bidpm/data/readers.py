"""Reading the shards back: Ray Data for training, plain pyarrow for evaluation.

``read_split``: a lazy ``ray.data.Dataset`` - one Ray Data task per shard file listed in the manifest
(never a directory listing, so stray files are ignored), its bytes checked against the manifest's
sha256 (``verified_bytes``) and read with pyarrow, plus a ``paired`` column
computed at read time by ``data.pairing_unit``'s rule (``pairing``). Image columns (fixed-size binary on disk, ``tensor_columns``)
come out as Arrow fixed-shape tensors: ``iter_torch_batches`` yields (B, H, W) float32 tensors. String
columns (``subject``) cannot become torch tensors with Ray's default collate; pass
``columns=TRAIN_COLUMNS`` (or drop ``subject``) before ``iter_torch_batches``.

``iter_split``: the same rows without Ray, streamed row group by row group (``data.row_group_rows``),
one file open at a time, for evaluation and registry promotion: a one-process scorer would spend more
on Ray's start-up than on reading. Every row has both modalities (shards hold co-registered pairs),
so the pairing ratio, a training-time choice, does not apply there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..io import storage
from .manifest import DataError, load_manifest
from .pairing import paired_flags, share_count, subject_order, subject_roles
from .split import SPLITS
from .tensor_columns import decode_images

READ_COLUMNS = ("subject", "slice", "source", "target", "mask")
TRAIN_COLUMNS = ("slice", "source", "target", "mask", "paired")  # all convertible to torch tensors
IMAGE_COLUMNS = ("source", "target", "mask")

def _add_paired(table: pa.Table, role: str, ratio: float, seed: int, keep: Optional[bool], columns: tuple[str, ...]) -> pa.Table:
    """``paired`` for one subject's rows: its role under the subject unit (``role`` set), else per slice."""
    if role:
        flags = np.full(table.num_rows, role == "paired")
    else:
        flags = paired_flags(table.column("subject").to_pylist(), table.column("slice").to_numpy(), seed, ratio)
    table = table.append_column("paired", pa.array(flags, pa.bool_()))
    if keep is not None and not role:
        table = table.filter(pa.array(flags == keep))
    return table.select(list(columns))


def _read_files(batch: pa.Table, ratio: float, seed: int, keep: Optional[bool], columns: tuple[str, ...]) -> pa.Table:
    """One block per shard file (one subject): read it through its pyarrow filesystem, add ``paired``."""
    tables = [_add_paired(read_shard_file(loc, sha, READ_COLUMNS), role, ratio, seed, keep, columns)
              for loc, sha, role in zip(batch.column("location").to_pylist(), batch.column("sha256").to_pylist(),
                                        batch.column("role").to_pylist())]
    return pa.concat_tables(tables)


# (location, sha256) pairs this process has checked: each shard file is hashed once per reading process
# (the first epoch), not on every read. Why a cache: hashing is ~5% of a GPU epoch's reading time.
_VERIFIED: set[tuple[str, str]] = set()


def verified_bytes(location: str, sha256: str) -> bytes:
    """A shard file's bytes, checked against the manifest's sha256 (once per process); a DataError
    naming the file on a mismatch (damaged, or swapped on the shared volume after the ingest)."""
    data = storage.read_bytes(location)
    if (location, sha256) not in _VERIFIED:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DataError(f"{location}: content differs from the manifest's sha256 (damaged, or written after the "
                            f"ingest); fix: rebuild the shards (jobs/prepare_data.py) into a fresh data.shards_dir")
        _VERIFIED.add((location, sha256))
    return data


def read_shard_file(location: str, sha256: str, columns: Sequence[str] = READ_COLUMNS) -> pa.Table:
    """One shard file (local path or URI), verified -> a table whose image columns are (H, W) float32 tensors."""
    import pyarrow.parquet as pq

    return decode_images(pq.read_table(pa.BufferReader(verified_bytes(location, sha256)), columns=list(columns)))


def read_split(cfg, split: str, paired: Optional[bool] = None, *, side: Optional[str] = None,
               columns: Sequence[str] = (*READ_COLUMNS, "paired")):
    """A lazy ``ray.data.Dataset`` of one split's rows (cheap: no data is read until iterated).

    Columns (default): subject (str), slice (int32), source / target / mask (float32 (H, W) tensors,
    images in [-1, 1]), paired (bool, by ``data.pairing_unit``: the subject's role, or
    ``pair_u(subject, slice, data.pairing_seed) < data.pairing_ratio`` per slice).
    ``paired=True``/``False`` keeps only that subset; under the subject unit ``side="source"``/``"target"``
    narrows ``paired=False`` to the unpaired subjects that give that side (the slice unit has no sides:
    every unpaired row serves both streams). ``columns`` selects the output columns (use
    ``TRAIN_COLUMNS`` for ``iter_torch_batches``, which cannot convert the string ``subject``).
    """
    import ray

    unknown = set(columns) - {*READ_COLUMNS, "paired"}
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}; available: {[*READ_COLUMNS, 'paired']}")
    entries = split_entries(cfg, split)
    if cfg.data.pairing_unit == "subject":
        roles = subject_roles([e["subject"] for e in entries], cfg.data.pairing_seed, cfg.data.pairing_ratio)
        wanted = {True: {"paired"}, False: {side} if side else {"source", "target"}, None: {"paired", "source", "target"}}[paired]
        entries = [{**e, "role": roles[e["subject"]]} for e in entries if roles[e["subject"]] in wanted]
        if not entries:
            what = "paired" if paired else f"unpaired ({side or 'any'} side)"
            raise DataError(f"split {split!r}: no subject is {what} at data.pairing_ratio={cfg.data.pairing_ratio} "
                            f"(data.pairing_unit=subject); raise the number of training subjects or change the ratio")
    else:
        entries = [{**e, "role": ""} for e in entries]
    # Why not ray.data.read_parquet: its file-listing stage cost seconds per call here (it is called
    # per epoch), and the manifest already lists the files; one block per subject file keeps memory
    # bounded by one subject's slices.
    ds = ray.data.from_items([{k: e[k] for k in ("location", "sha256", "role")} for e in entries],
                             override_num_blocks=len(entries))
    return ds.map_batches(
        partial(_read_files, ratio=cfg.data.pairing_ratio, seed=cfg.data.pairing_seed, keep=paired, columns=tuple(columns)),
        batch_format="pyarrow",
        batch_size=1,
    )


@dataclass
class SplitBatch:
    """One batch of a split: images (B, 1, H, W) float32 in [-1, 1] (mask in {0, 1}) and row ids."""

    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    subject: list[str]
    slice: np.ndarray


def split_entries(cfg, split: str) -> list[dict]:
    """The shard files of ``split`` listed in the manifest (``data.train_fraction`` applied to train), each
    {location, sha256, subject}, or a DataError naming the fix."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    m = load_manifest(cfg)
    chosen = [f for f in m["files"] if f["split"] == split]
    if split == "train" and cfg.data.train_fraction < 1.0:
        chosen = train_subset(chosen, cfg.data.train_fraction, cfg.data.pairing_seed)
    if not chosen:
        field = {"val": "data.split.val_fraction", "test": "data.split.test_fraction"}.get(split, "data.split")
        raise DataError(f"split {split!r} has no subjects in {m['location']}; fix: raise {field} (or list subjects) "
                        f"and rerun jobs/prepare_data.py")
    return [{"location": storage.join(m["location"], f["path"]), "sha256": f["sha256"], "subject": f["subject"]} for f in chosen]


def split_files(cfg, split: str, with_sha: bool = False) -> list:
    """The shard files of ``split`` (locations, or (location, sha256) pairs with ``with_sha``)."""
    return [(e["location"], e["sha256"]) if with_sha else e["location"] for e in split_entries(cfg, split)]


def train_subset(files: list[dict], fraction: float, seed: int) -> list[dict]:
    """``data.train_fraction``: the ``share_count(fraction, n)`` subject files first in ``subject_order``
    (``pair_u(subject, -1, seed)``), in manifest order. Nested: a smaller fraction keeps a prefix of the same ranking."""
    order = subject_order([f["subject"] for f in files], seed)
    keep = set(order[: share_count(fraction, len(order))])
    return [f for f in files if f["subject"] in keep]


def pairing_rows(manifest: dict, ratio: float, seed: int, fraction: float = 1.0, *, unit: str) -> dict[str, int]:
    """Training rows by use at ``ratio`` within the ``fraction`` subset of training subjects, from the
    manifest's slice indices, without reading a shard (read_split's rules): ``paired``, ``source`` (unpaired
    rows whose sources train) and ``target`` (unpaired rows whose targets train; the slice unit uses every
    unpaired row on both sides)."""
    files = [f for f in manifest["files"] if f["split"] == "train"]
    if fraction < 1.0:
        files = train_subset(files, fraction, seed)
    out = {"paired": 0, "source": 0, "target": 0}
    if unit == "subject":
        roles = subject_roles([f["subject"] for f in files], seed, ratio)
        for f in files:
            out[roles[f["subject"]]] += len(manifest["volumes"][f["subject"]]["slices"])
        return out
    for f in files:
        slices = manifest["volumes"][f["subject"]]["slices"]
        n = int(paired_flags([f["subject"]] * len(slices), slices, seed, ratio).sum())
        out["paired"] += n
        out["source"] += len(slices) - n
    out["target"] = out["source"]
    return out


def paired_train_rows(manifest: dict, ratio: float, seed: int, fraction: float = 1.0, *, unit: str) -> int:
    """Training rows that count as paired at ``ratio`` (``pairing_rows``' ``paired``)."""
    return pairing_rows(manifest, ratio, seed, fraction, unit=unit)["paired"]


def iter_split(cfg, split: str, batch_size: int, max_rows: Optional[int] = None) -> Iterator[SplitBatch]:
    """Ray-free stream of ``split`` in manifest order: batches of ``batch_size`` rows (the last may be
    short), at most ``max_rows`` rows in all. Memory: one shard file (its bytes are verified whole) plus one batch."""
    import pyarrow.parquet as pq

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seen = 0
    for loc, sha in split_files(cfg, split, with_sha=True):
        with pa.BufferReader(verified_bytes(loc, sha)) as f:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=list(READ_COLUMNS)):
                if max_rows is not None and seen >= max_rows:
                    return
                t = decode_images(pa.Table.from_batches([rb]))
                if max_rows is not None and seen + t.num_rows > max_rows:
                    t = t.slice(0, max_rows - seen)
                imgs = [t.column(k).combine_chunks().to_numpy_ndarray().astype(np.float32)[:, None]  # writable copy
                        for k in IMAGE_COLUMNS]
                seen += t.num_rows
                yield SplitBatch(*imgs, subject=t.column("subject").to_pylist(), slice=t.column("slice").to_numpy())
