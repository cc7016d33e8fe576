"""SynthRAD2025's metrics against a reference written here from the definition (issue 23; the challenge's
``image_metrics.py`` as specified in bidpm.metrics.synthrad2025's docstring): plain numpy only - the box
window from cumulative sums over a symmetric pad (scipy's "reflect"), the downsampling as the pairwise mean
of voxels 2k-1 and 2k with a zero plane in front (what "same" convolution with an even kernel does), the
edge padding to 97 voxels by hand - and closed forms (identical volumes, MAE on unclipped values)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bidpm.metrics.synthrad2025 import synthrad2025_metrics

LO, HI = -1024.0, 3071.0
W = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _box_mean(a: np.ndarray, k: int = 7) -> np.ndarray:
    r = k // 2
    p = np.pad(a, r, mode="symmetric")
    for axis in range(3):
        c = np.cumsum(p, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        n = p.shape[axis] - 2 * r
        p = (np.take(c, range(k, k + n), axis=axis) - np.take(c, range(0, n), axis=axis)) / k
    return p


def _halve(a: np.ndarray) -> np.ndarray:
    for axis in range(3):
        z = np.concatenate([np.zeros_like(np.take(a, [0], axis=axis)), a], axis=axis)
        idx = np.arange(0, a.shape[axis], 2)
        a = (np.take(z, idx, axis=axis) + np.take(z, idx + 1, axis=axis)) / 2
    return a


def _ref_ms_ssim(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray) -> float:
    inside = mask > 0
    x = np.where(inside, np.clip(ct, LO, HI), LO) + 1024.0
    y = np.where(inside, np.clip(sct, LO, HI), LO) + 1024.0
    m = inside.astype(float)
    pads = []
    for n in x.shape:
        short = max(97 - n, 0)
        pads.append((short // 2, short - short // 2))
    x, y, m = (np.pad(v, pads, mode="edge") for v in (x, y, m))
    r = 4095.0
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    out = 1.0
    for w in W:
        ux, uy = _box_mean(x), _box_mean(y)
        f = 343 / 342
        vx, vy = f * (_box_mean(x * x) - ux ** 2), f * (_box_mean(y * y) - uy ** 2)
        vxy = f * (_box_mean(x * y) - ux * uy)
        sx, sy = np.sqrt(np.maximum(vx, 0)), np.sqrt(np.maximum(vy, 0))
        lum = np.maximum((2 * ux * uy + c1) / (ux ** 2 + uy ** 2 + c1), 0)
        con = np.maximum((2 * sx * sy + c2) / (vx + vy + c2), 0)
        st = np.maximum((vxy + c2 / 2) / (sx * sy + c2 / 2), 0)
        level = (lum ** w) * (con ** w) * (st ** w)           # the luminance weight is the level's weight
        core = (slice(3, -3),) * 3
        out *= min(max(level[core][m[core] > 0].mean(), 0.0), 1.0)
        x, y, m = _halve(x), _halve(y), m[::2, ::2, ::2]
    return out


def _pair(shape=(40, 36, 30), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (zz ** 2 / 0.8 + yy ** 2 / 0.7 + xx ** 2 / 0.9) < 1
    ct = np.where(body, 40 + 900 * np.exp(-((zz - 0.2) ** 2 + yy ** 2) / 0.05) + 30 * rng.standard_normal(shape), -1000.0)
    ct[body & (xx > 0.6)] = 3500.0                             # above the range: clipped by PSNR / MS-SSIM only
    sct = ct + 60 * rng.standard_normal(shape) + 25.0
    return ct, sct, body


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_reference_written_from_the_definition(seed):
    ct, sct, mask = _pair(seed=seed)
    got = synthrad2025_metrics(ct, sct, mask)
    assert got["ms_ssim"] == pytest.approx(_ref_ms_ssim(ct, sct, mask), rel=1e-9)
    assert 0.0 < got["ms_ssim"] < 1.0
    inside = mask > 0
    assert got["mae"] == pytest.approx(np.abs(ct - sct)[inside].mean(), rel=1e-12)      # unclipped
    mse = ((np.clip(ct, LO, HI) - np.clip(sct, LO, HI))[inside] ** 2).mean()
    assert got["psnr"] == pytest.approx(10 * math.log10(4095.0 ** 2 / mse), rel=1e-12)


def test_closed_forms_identical_volumes_and_mae_beyond_the_range():
    ct, _, mask = _pair()
    same = synthrad2025_metrics(ct, ct.copy(), mask)
    assert same["mae"] == 0.0 and same["psnr"] == 100.0 and same["ms_ssim"] == pytest.approx(1.0, abs=1e-12)
    high = np.where(mask, 4000.0, -1000.0)
    got = synthrad2025_metrics(high, np.where(mask, 3500.0, -1000.0), mask)
    assert got["mae"] == pytest.approx(500.0) and got["psnr"] == 100.0       # both clip to 3071: PSNR sees no error


def test_a_mask_that_vanishes_is_an_error_naming_the_level():
    ct, sct, _ = _pair()
    with pytest.raises(ValueError, match="no voxel > 0"):
        synthrad2025_metrics(ct, sct, np.zeros_like(ct))
    tiny = np.zeros_like(ct)
    tiny[21, 18, 15] = 1                   # one voxel, at an odd index once padded (49): gone after the first halving
    with pytest.raises(ValueError, match="MS-SSIM level"):
        synthrad2025_metrics(ct, sct, tiny)
