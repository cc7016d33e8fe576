"""Datasets: layouts, phantoms, slicing/normalisation (pure), the Ray Data shard pipeline (``shards``),
the manifest (``manifest``) and the readers (``readers``: Ray Data for training, pyarrow for scoring).

``prepare_shards`` and ``read_split`` are looked up on first use (they import Ray; ``iter_split`` never
does), so the pure modules stay importable without it; ``rebuild_volume`` too (it resizes with torch), so
the readers, which every Ray Data read task imports, load no torch.
"""

from __future__ import annotations

from typing import Any

from .manifest import DataError, load_manifest, verify_shards, volume_geometry
from .normalise import denormalise, denormalise_ct, denormalise_mr, normalise
from .pairing import pair_u, paired_flags

_LAZY = {"prepare_shards"}
_GEOMETRY = {"rebuild_volume"}
_READERS = {"read_split", "iter_split", "TRAIN_COLUMNS", "READ_COLUMNS"}

__all__ = [
    "DataError", "READ_COLUMNS", "iter_split", "TRAIN_COLUMNS", "denormalise", "denormalise_ct", "denormalise_mr", "load_manifest",
    "normalise", "pair_u", "paired_flags", "prepare_shards", "read_split", "rebuild_volume", "verify_shards",
    "volume_geometry",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import shards

        return getattr(shards, name)
    if name in _GEOMETRY:
        from . import geometry

        return getattr(geometry, name)
    if name in _READERS:
        from . import readers

        return getattr(readers, name)
    raise AttributeError(f"module 'bidpm.data' has no attribute {name!r}")
