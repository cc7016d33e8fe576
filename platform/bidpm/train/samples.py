"""Sample grid PNG for a checkpoint: a quick, labelled look at both synthesis directions.

One row per validation slice, eight tiles: ``source | synthetic target | target | |error|`` then
(after a wider gap) ``target | synthetic source | source | |error|``. Images in [-1, 1] are mapped
to grey levels 0..255 (values outside are clipped). The error tiles show ``|synthesis - real|`` in
the same [-1, 1] units on a fixed scale **[0, 1]**: 0 is black, 1 or more (half the intensity range
or worse) is white, linear in between; ``grey = round(255 * clip(|error|, 0, 1))``. Tiles are
separated by 2-pixel white lines (4 between the two directions). Small images are enlarged by an
integer factor (nearest neighbour: pixels stay pixels) so a tile is at least ``MIN_TILE`` pixels on
its short side. A white band above the first row titles each column in black (Pillow's built-in
font, so no font files are needed): the role, then the modality names when given, and for the
error columns a black-to-white bar labelled 0 and 1 (the scale).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from bidpm.io.storage import write_bytes_atomic

SAMPLES_FILE = "samples.png"
MIN_TILE = 128
ERROR_MAX = 1.0  # |error| shown white at and above this ([-1, 1] image units)
TILES = 8        # tiles per row
PAD = 4          # title band: pixels above, between and below the two title lines


def _np(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def to_grey(img: np.ndarray) -> np.ndarray:
    """Image values in [-1, 1] -> uint8 grey 0..255 (clipped)."""
    return np.clip((img + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def error_grey(err: np.ndarray) -> np.ndarray:
    """|error| in [-1, 1] units -> uint8 grey on the fixed scale [0, ERROR_MAX] (clipped)."""
    return np.clip(np.abs(err) / ERROR_MAX * 255.0, 0, 255).round().astype(np.uint8)


def tile_starts(w: int, gap: int = 2) -> list[int]:
    """Left edge of each of the ``TILES`` columns (gap ``gap``, ``2 * gap`` between the directions)."""
    half = TILES // 2
    return [j * (w + gap) + (gap if j >= half else 0) for j in range(TILES)]


def tiles_array(source: Tensor, fwd: Tensor, target: Tensor, bwd: Tensor, gap: int = 2) -> np.ndarray:
    """(K, 1, H, W) tensors in [-1, 1] -> uint8 image grid, K rows x 8 tiles, no titles, not enlarged."""
    k, _, h, w = source.shape
    s, f, t, b = (_np(x)[:, 0] for x in (source, fwd, target, bwd))
    columns = [to_grey(s), to_grey(f), to_grey(t), error_grey(f - t),
               to_grey(t), to_grey(b), to_grey(s), error_grey(b - s)]
    starts = tile_starts(w, gap)
    out = np.full((k * h + (k - 1) * gap, starts[-1] + w), 255, dtype=np.uint8)
    for i in range(k):
        y = i * (h + gap)
        for x, col in zip(starts, columns):
            out[y : y + h, x : x + w] = col[i]
    return out


def column_titles(modalities: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    """(first line, second line) per column; the error columns' second line is the scale bar."""
    a, b = modalities if modalities else ("", "")
    m = (lambda n: f"({n})") if modalities else (lambda n: "")
    arrow = (lambda x, y: f"({x} -> {y})") if modalities else (lambda x, y: "")
    return [("source", m(a)), ("synthetic target", arrow(a, b)), ("target", m(b)), ("|error|", ""),
            ("target", m(b)), ("synthetic source", arrow(b, a)), ("source", m(a)), ("|error|", "")]


def _font(tile_w: int, texts: list[str]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font, the largest size (<= 20 px) at which every title fits in a tile."""
    size = max(8, min(20, tile_w // 7))
    while True:
        font = ImageFont.load_default(size=size)  # embedded font: offline, no files; bitmap without FreeType
        if size <= 8 or max(font.getlength(t) for t in texts) <= tile_w - 2 * PAD:
            return font
        size -= 1


def title_band(width: int, starts: list[int], tile_w: int, modalities: tuple[str, str] | None = None) -> np.ndarray:
    """uint8 white band with the column titles centred over tiles starting at ``starts`` (display pixels)."""
    titles = column_titles(modalities)
    font = _font(tile_w, [t for pair in titles for t in pair] + ["0 1"])
    line = int(font.getbbox("Ag|()")[3]) + PAD
    band = np.full((PAD + 2 * line + PAD, width), 255, dtype=np.uint8)
    img = Image.fromarray(band)
    draw = ImageDraw.Draw(img)
    for x, (first, second) in zip(starts, titles):
        for y, text in ((PAD, first), (PAD + line, second)):
            draw.text((x + (tile_w - font.getlength(text)) / 2, y), text, fill=0, font=font)
        if first == "|error|":  # scale bar: "0" [black ... white] "1", framed so its white end shows
            lo, hi = font.getlength("0"), font.getlength("1")
            x0, x1 = x + PAD + int(lo) + PAD, x + tile_w - PAD - int(hi) - PAD
            y0, y1 = PAD + line + 1, PAD + 2 * line - PAD - 1
            draw.text((x + PAD, PAD + line), "0", fill=0, font=font)
            draw.text((x1 + PAD, PAD + line), "1", fill=0, font=font)
            ramp = np.linspace(0, 255, x1 - x0).round().astype(np.uint8)
            img.paste(Image.fromarray(np.tile(ramp, (y1 - y0, 1))), (x0, y0))
            draw.rectangle((x0 - 1, y0 - 1, x1, y1), outline=0)
    return np.asarray(img).copy()


def display_scale(h: int, w: int) -> int:
    """Integer enlargement so the short side of a tile reaches ``MIN_TILE`` pixels (1 for large images)."""
    return max(1, MIN_TILE // min(h, w))


def grid_array(source: Tensor, fwd: Tensor, target: Tensor, bwd: Tensor, gap: int = 2,
               modalities: tuple[str, str] | None = None, scale: int | None = None) -> np.ndarray:
    """The whole picture as uint8: title band on top of ``tiles_array`` enlarged ``scale`` times
    (default ``display_scale``; nearest neighbour)."""
    h, w = source.shape[-2:]
    scale = display_scale(h, w) if scale is None else scale
    tiles = np.kron(tiles_array(source, fwd, target, bwd, gap), np.ones((scale, scale), dtype=np.uint8))
    band = title_band(tiles.shape[1], [scale * x for x in tile_starts(w, gap)], scale * w, modalities)
    return np.vstack([band, tiles])


def save_sample_grid(directory: str | os.PathLike, source: Tensor, fwd: Tensor, target: Tensor, bwd: Tensor,
                     *, modalities: tuple[str, str] | None = None) -> Path:
    """Write ``samples.png`` into ``directory`` (temp name, then renamed); returns its path.

    ``modalities``: (source, target) names for the titles, e.g. ("T1", "T2").
    """
    final = Path(directory) / SAMPLES_FILE
    buf = io.BytesIO()
    Image.fromarray(grid_array(source, fwd, target, bwd, modalities=modalities)).save(buf, format="PNG")
    write_bytes_atomic(str(final), buf.getvalue())
    return final
