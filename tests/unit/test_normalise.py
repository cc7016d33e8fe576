"""Normalisation to [-1, 1] and back; slice picking; anti-aliased resize (pure numpy/torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
import torch

from bidpm.data.normalise import ct_params, denormalise, denormalise_ct, mr_params, normalise
from bidpm.data.slicing import central_slices, mask_slices, resize_slices


def test_ct_window_maps_to_unit_interval_and_back():
    hu = np.array([-2000.0, -1024.0, 0.0, 988.0, 3000.0, 5000.0])
    y = normalise(hu, ct_params([-1024, 3000]))
    np.testing.assert_allclose(y, [-1.0, -1.0, 2 * 1024 / 4024 - 1, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(denormalise_ct(y, (-1024, 3000)), np.clip(hu, -1024, 3000), atol=1e-3)


def test_mr_percentiles_inside_mask_match_numpy():
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 100.0, (10, 10, 6)).astype(np.float32)
    mask = np.zeros_like(vol, bool)
    mask[2:8, 2:8, 1:5] = True
    vol[~mask] = 0.0  # background must not pull the low percentile
    p = mr_params(vol, mask, [1.0, 99.0])
    assert p["low"] == pytest.approx(np.percentile(vol[mask], 1.0))
    assert p["high"] == pytest.approx(np.percentile(vol[mask], 99.0))
    y = normalise(vol, p)
    assert y.min() >= -1 and y.max() <= 1 and y.dtype == np.float32
    inside = (vol >= p["low"]) & (vol <= p["high"])
    np.testing.assert_allclose(denormalise(y, p)[inside], vol[inside], rtol=1e-5, atol=1e-3)


def test_mr_flat_inside_mask_raises():
    vol = np.ones((4, 4, 4), np.float32)
    vol[0] = 5
    mask = np.zeros_like(vol, bool)
    mask[1:] = True
    with pytest.raises(ValueError, match="constant"):
        mr_params(vol, mask, [0.5, 99.5])
    with pytest.raises(ValueError, match="empty"):
        mr_params(vol, np.zeros_like(mask), [0.5, 99.5])


def test_central_slices():
    np.testing.assert_array_equal(central_slices(10, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(central_slices(5, 5), range(5))
    with pytest.raises(ValueError, match="fewer than the 6"):
        central_slices(5, 6)


def test_mask_slices():
    m = np.zeros((3, 3, 6), bool)
    m[1, 1, 2] = m[0, 2, 4] = True
    np.testing.assert_array_equal(mask_slices(m), [2, 4])


def test_resize_antialiases_downsampling():
    # A 1-pixel checkerboard is pure Nyquist: anti-aliased downsampling averages it to ~0,
    # plain bilinear (no antialias) would alias it into a large-amplitude pattern.
    x = np.indices((60, 60)).sum(0) % 2 * 2.0 - 1.0  # 60 -> 17: a non-integer factor
    x = x[None].astype(np.float32)
    out = resize_slices(x, (17, 17))
    assert out.shape == (1, 17, 17)
    assert np.abs(out).max() < 0.05
    aliased = F.interpolate(torch.from_numpy(x)[None], size=(17, 17), mode="bilinear", align_corners=False, antialias=False)
    assert aliased.abs().max() > 0.8


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of anti-aliased linear resampling, written out from its definition (the
    PIL 'bilinear' filter): output pixel i is centred at (i + 0.5) * s in input coordinates, s =
    n_in / n_out; input pixel j (centre j + 0.5) gets weight max(0, 1 - |d| / r) with r = max(s, 1)
    (the triangle widened by the scale when downsampling), then rows are normalised to sum to one."""
    s = n_in / n_out
    r = max(s, 1.0)
    centre = (np.arange(n_out) + 0.5) * s
    d = (np.arange(n_in)[None, :] + 0.5) - centre[:, None]
    w = np.clip(1.0 - np.abs(d) / r, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shape,size", [((2, 40, 30), (16, 24)), ((1, 20, 20), (32, 48)), ((1, 9, 60), (9, 17)), ((1, 240, 240), (192, 192))])
def test_resize_matches_numpy_triangle_filter(shape, size):
    x = np.random.default_rng(2).uniform(-1, 1, shape)
    ref = np.einsum("hx,kxy,wy->khw", _triangle_weights(shape[1], size[0]), x, _triangle_weights(shape[2], size[1]))
    np.testing.assert_allclose(resize_slices(x.astype(np.float32), size), ref, atol=1e-5)


def test_resize_keeps_range_constant_and_mask_binary():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (3, 40, 30)).astype(np.float32)
    out = resize_slices(x, (16, 24))
    assert out.min() >= -1 and out.max() <= 1
    np.testing.assert_allclose(resize_slices(np.full((1, 40, 30), 0.25, np.float32), (16, 16)), 0.25, atol=1e-6)
    m = (rng.random((2, 40, 30)) > 0.5).astype(np.float32)
    mo = resize_slices(m, (16, 16), is_mask=True)
    assert set(np.unique(mo)) <= {0.0, 1.0}
    np.testing.assert_array_equal(resize_slices(m, (40, 30), is_mask=True), m)  # same size: identity


@pytest.mark.parametrize("flip_x,transpose", [(False, False), (True, False), (True, True)])
def test_mr_percentiles_on_reoriented_views_match_numpy(flip_x, transpose):
    # Ingest hands mr_params flipped/transposed views of the decoded buffer (RAS order of an LPS
    # file), with a mask that may have a different memory layout; the multiset inside must not change.
    rng = np.random.default_rng(3)
    raw = rng.normal(100.0, 30.0, (7, 9, 5)).astype(np.float32)
    view = raw[::-1] if flip_x else raw
    view = view.transpose(2, 0, 1) if transpose else view
    mask = np.ascontiguousarray(view > 90.0)  # C-ordered, unlike the view
    ref = np.percentile(np.ascontiguousarray(view)[mask], [5.0, 95.0])
    p = mr_params(view, mask, [5.0, 95.0])
    np.testing.assert_allclose([p["low"], p["high"]], ref, rtol=1e-6)
    p_f = mr_params(np.asfortranarray(view), mask.astype(np.uint8), [5.0, 95.0])
    np.testing.assert_allclose([p_f["low"], p_f["high"]], ref, rtol=1e-6)


def test_nonzero_mask_matches_plain_numpy_on_reoriented_views():
    from bidpm.data.volume import nonzero_mask

    rng = np.random.default_rng(4)
    a_raw = rng.integers(0, 3, (6, 5, 4)).astype(np.float32)
    b_raw = rng.integers(0, 3, (6, 5, 4)).astype(np.float32)
    for view in (lambda x: x, lambda x: x[::-1, :, ::-1], lambda x: x[:, ::-1].transpose(1, 2, 0)):
        a, b = view(a_raw), view(b_raw)
        np.testing.assert_array_equal(nonzero_mask(a, b), (np.asarray(a) != 0) | (np.asarray(b) != 0))
    np.testing.assert_array_equal(nonzero_mask(a_raw[::-1], np.ascontiguousarray(b_raw[::-1])),
                                  (a_raw[::-1] != 0) | (b_raw[::-1] != 0))


@pytest.mark.parametrize("n", [10, 1000, 65536, 300_001])
@pytest.mark.parametrize("kind", ["gamma", "ties", "sorted", "reversed"])
def test_linear_percentiles_match_numpy(n, kind):
    from bidpm.data.normalise import linear_percentiles

    rng = np.random.default_rng(n)
    x = {"gamma": lambda: rng.gamma(2.0, 100.0, n),
         "ties": lambda: rng.integers(0, 7, n) * 10.0,  # heavy ties at every threshold
         "sorted": lambda: np.sort(rng.normal(0, 1, n)),  # a strided sample of sorted data
         "reversed": lambda: np.sort(rng.normal(0, 1, n))[::-1].copy()}[kind]().astype(np.float32)
    ps = [0.0, 0.5, 1.0, 25.0, 50.0, 99.0, 99.5, 100.0]
    got = linear_percentiles(x.copy(), ps)
    np.testing.assert_allclose(got, np.percentile(x.astype(np.float64), ps), rtol=1e-6, atol=1e-6)


def test_linear_percentiles_select_in_the_tails(monkeypatch):
    # The point of linear_percentiles: for tail percentiles it partitions only a small tail, not x.
    import importlib

    nm = importlib.import_module("bidpm.data.normalise")

    sizes = []
    real = np.partition
    monkeypatch.setattr(nm.np, "partition", lambda a, kth: sizes.append(a.size) or real(a, kth))
    x = np.random.default_rng(0).gamma(2.0, 100.0, 300_001).astype(np.float32)
    got = nm.linear_percentiles(x.copy(), [0.5, 99.5])
    np.testing.assert_allclose(got, np.percentile(x, [0.5, 99.5]), rtol=1e-6)
    assert len(sizes) == 2 and max(sizes) < x.size // 50, sizes
