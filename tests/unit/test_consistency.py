"""Inter-slice consistency against scikit-image per reformatted plane and numpy closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from bidpm.metrics.consistency import inter_slice_consistency

skm = pytest.importorskip("skimage.metrics")


def _vols(seed: int = 0):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 20), np.linspace(-1, 1, 18), indexing="ij")
    ref = np.sin(2 * x + z) * np.cos(3 * y) + 0.05 * rng.standard_normal(x.shape)
    mask = (x ** 2 + y ** 2) < 0.8
    return ref, mask


def _ref_planes(p, r, m, rng, axis):
    vals = []
    for k in range(p.shape[axis]):
        mk = np.take(m, k, axis=axis)[3:-3, 3:-3]
        if mk.any():
            _, smap = skm.structural_similarity(np.take(r, k, axis=axis), np.take(p, k, axis=axis), data_range=rng, full=True)
            vals.append(smap[3:-3, 3:-3][mk])
    return float(np.concatenate(vals).mean())


def test_planes_match_scikit_image_and_flicker_shows_through_the_planes():
    ref, mask = _vols()
    flicker = np.random.default_rng(1).normal(0, 0.3, size=(ref.shape[0], 1, 1))     # one offset per axial slice
    for pred in (ref + 0.1 * np.random.default_rng(2).standard_normal(ref.shape), ref + flicker):
        got = inter_slice_consistency(pred, ref, 2.0, mask)
        assert got["sag_ssim"] == pytest.approx(_ref_planes(pred, ref, mask, 2.0, 2), abs=1e-9)
        assert got["cor_ssim"] == pytest.approx(_ref_planes(pred, ref, mask, 2.0, 1), abs=1e-9)
        both = mask[1:] & mask[:-1]
        assert got["tp_grad_mae"] == pytest.approx(np.abs(np.diff(pred, axis=0) - np.diff(ref, axis=0))[both].mean())
    steady = inter_slice_consistency(ref + 0.2, ref, 2.0, mask)          # the same offset on every slice
    jumpy = inter_slice_consistency(ref + flicker, ref, 2.0, mask)
    assert steady["tp_grad_mae"] == pytest.approx(0.0, abs=1e-12) and jumpy["tp_grad_mae"] > 0.1
    assert jumpy["sag_ssim"] < 0.95 and jumpy["cor_ssim"] < 0.95      # the flicker shows in the other planes
    assert inter_slice_consistency(ref, ref, 2.0, mask)["sag_ssim"] == pytest.approx(1.0)


def test_a_ramp_through_the_planes_is_its_slope():
    ref, mask = _vols()
    ramp = 0.03 * np.arange(ref.shape[0])[:, None, None]
    assert inter_slice_consistency(ref + ramp, ref, 2.0, mask)["tp_grad_mae"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="mask"):
        inter_slice_consistency(ref, ref, 2.0, np.zeros_like(mask))
