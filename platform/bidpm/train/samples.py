"""Sample grid PNG for a checkpoint: a quick look at both synthesis directions.

One row per validation slice, six tiles: ``source | forward synthesis | target || target | backward
synthesis | source``, images in [-1, 1] mapped to grey levels 0..255 (values outside are clipped),
tiles separated by 2-pixel white lines (4 pixels between the two directions). Small images are
enlarged by an integer factor (nearest neighbour: pixels stay pixels) so a tile is at least
``MIN_TILE`` pixels on its short side and the grid is readable at a glance.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from bidpm.data.storage import write_bytes_atomic

SAMPLES_FILE = "samples.png"
MIN_TILE = 128


def grid_array(source: Tensor, fwd: Tensor, target: Tensor, bwd: Tensor, gap: int = 2) -> np.ndarray:
    """(K, 1, H, W) tensors in [-1, 1] -> uint8 grid of K rows x 6 tiles (see module docstring)."""
    k, _, h, w = source.shape
    tiles_per_row = [source, fwd, target, target, bwd, source]
    gaps = [gap, gap, 2 * gap, gap, gap]  # wider gap between the forward and the backward triple
    width = 6 * w + sum(gaps)
    height = k * h + (k - 1) * gap
    out = np.full((height, width), 255, dtype=np.uint8)
    for i in range(k):
        y = i * (h + gap)
        x = 0
        for j, t in enumerate(tiles_per_row):
            img = t[i, 0].detach().float().cpu().numpy()
            out[y : y + h, x : x + w] = np.clip((img + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
            x += w + (gaps[j] if j < len(gaps) else 0)
    return out


def display_scale(h: int, w: int) -> int:
    """Integer enlargement so the short side of a tile reaches ``MIN_TILE`` pixels (1 for large images)."""
    return max(1, MIN_TILE // min(h, w))


def save_sample_grid(directory: str | os.PathLike, source: Tensor, fwd: Tensor, target: Tensor, bwd: Tensor) -> Path:
    """Write ``samples.png`` into ``directory`` (temp name, then renamed); returns its path."""
    final = Path(directory) / SAMPLES_FILE
    scale = display_scale(source.shape[-2], source.shape[-1])
    grid = np.kron(grid_array(source, fwd, target, bwd), np.ones((scale, scale), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    write_bytes_atomic(str(final), buf.getvalue())
    return final
