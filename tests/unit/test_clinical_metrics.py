"""bidpm.metrics.clinical against independent references (scikit-image, plain numpy) on volumes built here.

The SynthRAD2023 reference below redoes the challenge's recipe step by step with scikit-image, as the
official ``image_metrics.py`` does; the module under test computes its SSIM map itself with scipy.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bidpm.metrics import clinical, image, synthrad_metrics, volume_metrics

SHAPE = (24, 28, 20)
LO, HI = -1024.0, 3000.0


def _body_mask(shape=SHAPE) -> np.ndarray:
    """Ellipsoid filling most of the volume, touching the 3-voxel SSIM border on some axes."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (sum((g / r) ** 2 for g, r in zip(grids, (0.95, 0.8, 1.05))) <= 1.0).astype(np.uint8)


def _ct_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth CT-like volume in HU (air outside, soft tissue, bone up past 3000) and a noisy synthesis."""
    rng = np.random.default_rng(seed)
    mask = _body_mask()
    tissue = gaussian_filter(rng.normal(size=SHAPE), 2.0)
    tissue = 40.0 + 900.0 * tissue / np.abs(tissue).max()                    # about -860 .. 940 HU
    bone = gaussian_filter(rng.normal(size=SHAPE), 1.5) > 0.12
    gt = np.where(mask > 0, tissue, -1000.0) + np.where(bone & (mask > 0), 1500.0, 0.0)
    gt[10:13, 12:15, 8:11] = 3600.0                                          # metal implant, above 3000
    gt[14:16, 9:11, 12:14] = -1400.0                                          # below -1024 inside the body
    gt += rng.normal(scale=5.0, size=SHAPE)
    pred = gt + gaussian_filter(rng.normal(scale=300.0, size=SHAPE), 1.0) + rng.normal(scale=40.0, size=SHAPE)
    pred[0, 0, 0], pred[-1, -1, -1] = -3000.0, 5000.0                        # out of range outside the body
    assert gt.max() > HI and gt[mask > 0].min() < LO and pred[mask > 0].max() > HI, "clipping must matter"
    return gt, pred, mask


def _synthrad_reference(gt, pred, mask, clip=True, fill=True) -> dict[str, float]:
    """The challenge's recipe with scikit-image; ``clip``/``fill`` switch steps off to show they matter."""
    inside = mask > 0
    mae = np.abs(gt - pred)[inside].mean()
    g, p = (np.clip(gt, LO, HI), np.clip(pred, LO, HI)) if clip else (gt, pred)
    psnr = peak_signal_noise_ratio(g[inside], p[inside], data_range=HI - LO)
    if fill:
        g, p = np.where(inside, g, LO), np.where(inside, p, LO)
    g, p = g - LO, p - LO
    _, smap = structural_similarity(g, p, data_range=HI - LO, full=True)
    ssim = smap[3:-3, 3:-3, 3:-3][inside[3:-3, 3:-3, 3:-3]].mean(dtype=np.float64)
    return {"mae": float(mae), "psnr": float(psnr), "ssim": float(ssim)}


def test_synthrad_matches_skimage_recipe():
    gt, pred, mask = _ct_pair(0)
    got, ref = synthrad_metrics(gt, pred, mask), _synthrad_reference(gt, pred, mask)
    assert set(got) == {"mae", "psnr", "ssim"}
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
    assert 0.0 < got["ssim"] < 1.0 and 10.0 < got["psnr"] < 60.0 and got["mae"] > 0.0


def test_synthrad_clipping_and_fill_matter():
    gt, pred, mask = _ct_pair(1)
    got = synthrad_metrics(gt, pred, mask)
    no_clip = _synthrad_reference(gt, pred, mask, clip=False)
    no_fill = _synthrad_reference(gt, pred, mask, fill=False)
    assert abs(got["psnr"] - no_clip["psnr"]) > 1e-3
    assert abs(got["ssim"] - no_clip["ssim"]) > 1e-4
    assert abs(got["ssim"] - no_fill["ssim"]) > 1e-4
    assert got["mae"] == pytest.approx(no_clip["mae"], rel=1e-12)         # MAE is on unclipped HU


def test_synthrad_on_nifti_written_here(tmp_path):
    nib = pytest.importorskip("nibabel")
    gt, pred, mask = _ct_pair(2)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    paths = {}
    for name, arr, dtype in (("ct", gt, np.float32), ("sct", pred, np.float32), ("mask", mask, np.uint8)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr.astype(dtype), affine), paths[name])
    ct, sct, body = (np.asanyarray(nib.load(paths[k]).dataobj) for k in ("ct", "sct", "mask"))
    assert ct.shape == SHAPE and ct.dtype == np.float32
    got = synthrad_metrics(ct, sct, body)
    ref = _synthrad_reference(ct.astype(np.float64), sct.astype(np.float64), body)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
    # SimpleITK's (z, y, x) order vs nibabel's (x, y, z): same numbers
    flipped = synthrad_metrics(ct.transpose(2, 1, 0), sct.transpose(2, 1, 0), body.transpose(2, 1, 0))
    for key in got:
        assert flipped[key] == pytest.approx(got[key], rel=1e-9), key


def test_synthrad_identical_volumes():
    gt, _, mask = _ct_pair(3)
    got = synthrad_metrics(gt, gt.copy(), mask)
    assert got["mae"] == 0.0 and got["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert got["psnr"] == pytest.approx(image.PSNR_MAX_DB)


def test_volume_metrics_match_skimage_without_mask():
    rng = np.random.default_rng(4)
    ref = gaussian_filter(rng.uniform(size=SHAPE), 1.5)
    pred = ref + 0.02 * rng.normal(size=SHAPE)
    got = volume_metrics(pred, ref, data_range=1.0)
    assert set(got) == {"ssim", "psnr", "mae"}
    assert got["ssim"] == pytest.approx(structural_similarity(ref, pred, data_range=1.0), rel=1e-6, abs=1e-9)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, pred, data_range=1.0), rel=1e-6)
    assert got["mae"] == pytest.approx(np.abs(pred - ref).mean(), rel=1e-12)


def test_volume_metrics_match_skimage_with_mask():
    rng = np.random.default_rng(5)
    ref = 2.0 * gaussian_filter(rng.uniform(size=SHAPE), 1.5) - 1.0
    pred = ref + 0.05 * rng.normal(size=SHAPE)
    mask = _body_mask()
    inside = mask > 0
    got = volume_metrics(pred, ref, data_range=2.0, mask=mask)
    _, smap = structural_similarity(ref, pred, data_range=2.0, full=True)
    c = (slice(3, -3),) * 3
    assert got["ssim"] == pytest.approx(smap[c][inside[c]].mean(dtype=np.float64), rel=1e-6, abs=1e-9)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(ref[inside], pred[inside], data_range=2.0),
                                        rel=1e-6)
    assert got["mae"] == pytest.approx(np.abs(pred - ref)[inside].mean(), rel=1e-12)
    assert got["ssim"] != pytest.approx(volume_metrics(pred, ref, data_range=2.0)["ssim"], abs=1e-6)


def test_volume_metrics_identical_volumes_capped():
    ref = gaussian_filter(np.random.default_rng(6).uniform(size=SHAPE), 1.0)
    got = volume_metrics(ref.copy(), ref, data_range=1.0)
    assert got["ssim"] == pytest.approx(1.0, abs=1e-12) and got["mae"] == 0.0
    assert got["psnr"] == clinical.PSNR_MAX_DB == image.PSNR_MAX_DB


@pytest.mark.parametrize("call, match", [
    (lambda v, m: synthrad_metrics(v, v[:-1], m), r"pred_hu shape .* resample"),
    (lambda v, m: synthrad_metrics(v[None], v[None], m), r"gt_hu must be one 3-D volume"),
    (lambda v, m: synthrad_metrics(v, v, m[:, :, :5]), r"mask shape"),
    (lambda v, m: synthrad_metrics(v[:, :, :5], v[:, :, :5], m[:, :, :5]), r"shorter than 7"),
    (lambda v, m: synthrad_metrics(np.where(m > 0, np.nan, v), v, m), r"gt_hu contains NaN or inf"),
    (lambda v, m: synthrad_metrics(v, v, np.zeros_like(m)), r"mask has no voxel > 0"),
    (lambda v, m: synthrad_metrics(v, v, m, hu_range=(3000.0, -1024.0)), r"hu_range"),
    (lambda v, m: volume_metrics(v, v, data_range=0.0), r"data_range must be a positive"),
    (lambda v, m: volume_metrics(v, v.T, data_range=1.0), r"pred shape"),
    (lambda v, m: volume_metrics(v, np.full_like(v, np.inf), data_range=1.0), r"ref contains NaN or inf"),
])
def test_bad_inputs_raise(call, match):
    gt, _, mask = _ct_pair(7)
    with pytest.raises(ValueError, match=match):
        call(gt, mask)


def test_mask_only_in_border_is_empty():
    gt, pred, _ = _ct_pair(8)
    border = np.zeros(SHAPE, dtype=np.uint8)
    border[:3] = 1                                                          # inside the cropped border only
    with pytest.raises(ValueError, match="cropped from every side"):
        synthrad_metrics(gt, pred, border)
