"""bidpm.metrics against independent references: scikit-image (SSIM, PSNR), numpy, scipy (FID)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from bidpm import metrics as M

skm = pytest.importorskip("skimage.metrics")

# (low, high) image scales: [-1, 1] (our default), [0, 1], 8-bit, CT Hounsfield units.
SCALES = [(-1.0, 1.0), (0.0, 1.0), (0.0, 255.0), (-1024.0, 3000.0)]


def _structured(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A phantom-like image in [0, 1]: smooth gradient, a bright disc, a dark square, a little noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.3 * xx + 0.2 * yy
    img += 0.5 * (((xx - 0.45) ** 2 + (yy - 0.5) ** 2) < 0.08)
    img[h // 5: h // 3, w // 2: w // 2 + w // 4] = 0.05
    return np.clip(img + 0.02 * rng.standard_normal((h, w)), 0.0, 1.0)


def _pair(kind: str, b: int, h: int, w: int, scale: tuple[float, float], seed: int = 0):
    """Reference and a degraded prediction, float64 numpy (B,H,W) in ``scale``."""
    rng = np.random.default_rng(seed)
    lo, hi = scale
    if kind == "random":
        ref = rng.uniform(0, 1, (b, h, w))
        pred = np.clip(ref + 0.2 * rng.standard_normal((b, h, w)), 0, 1)
    else:
        ref = np.stack([_structured(h, w, rng) for _ in range(b)])
        pred = np.clip(np.roll(ref, 1, axis=-1) * 0.9 + 0.05 * rng.standard_normal((b, h, w)) + 0.03, 0, 1)
    return lo + (hi - lo) * ref, lo + (hi - lo) * pred


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).float().unsqueeze(1)  # (B,1,H,W)


def _sk_ssim(ref: np.ndarray, pred: np.ndarray, data_range: float, full: bool = False):
    return skm.structural_similarity(ref, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=data_range, full=full)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_psnr_mae_match_skimage_and_numpy(kind, scale):
    ref, pred = _pair(kind, 3, 24, 32, scale)
    r = scale[1] - scale[0]
    # references are computed from the float32-rounded inputs the torch code sees
    ref32, pred32 = ref.astype(np.float32).astype(np.float64), pred.astype(np.float32).astype(np.float64)
    out = M.image_metrics(_t(pred), _t(ref), data_range=r)
    assert set(out) == {"ssim", "psnr", "mae"}
    for v in out.values():
        assert v.shape == (3,) and v.dtype == torch.float32
    sk_ssim = [_sk_ssim(ref32[i], pred32[i], r) for i in range(3)]
    sk_psnr = [skm.peak_signal_noise_ratio(ref32[i], pred32[i], data_range=r) for i in range(3)]
    np_mae = np.abs(pred32 - ref32).mean(axis=(1, 2))
    np.testing.assert_allclose(out["ssim"].numpy(), sk_ssim, atol=1e-4)
    np.testing.assert_allclose(out["psnr"].numpy(), sk_psnr, atol=1e-3)
    np.testing.assert_allclose(out["mae"].numpy(), np_mae, rtol=1e-5, atol=1e-6 * r)


def test_ssim_multichannel_is_channel_mean_like_skimage():
    rng = np.random.default_rng(1)
    ref = rng.uniform(-1, 1, (2, 3, 20, 20))
    pred = np.clip(ref + 0.3 * rng.standard_normal(ref.shape), -1, 1)
    got = M.ssim(torch.from_numpy(pred).float(), torch.from_numpy(ref).float(), data_range=2.0).numpy()
    want = [skm.structural_similarity(ref[i].astype(np.float32).astype(np.float64),
                                      pred[i].astype(np.float32).astype(np.float64), channel_axis=0,
                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0)
            for i in range(2)]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("scale", [(-1.0, 1.0), (0.0, 255.0)])
@pytest.mark.parametrize("mask_dims", [3, 4])
def test_masked_metrics_match_numpy_on_masked_region(scale, mask_dims):
    ref, pred = _pair("structured", 2, 32, 32, scale, seed=3)
    r = scale[1] - scale[0]
    yy, xx = np.mgrid[0:32, 0:32]
    mask = np.stack([((yy - 16) ** 2 + (xx - 14) ** 2 < 100), (yy > 10) & (xx < 25)]).astype(np.float32)
    ref32, pred32 = ref.astype(np.float32).astype(np.float64), pred.astype(np.float32).astype(np.float64)
    m = torch.from_numpy(mask) if mask_dims == 3 else torch.from_numpy(mask).unsqueeze(1)
    out = M.image_metrics(_t(pred), _t(ref), data_range=r, mask=m)
    pad = 5
    for i in range(2):
        sel = mask[i] > 0
        d = pred32[i] - ref32[i]
        assert out["mae"][i].item() == pytest.approx(np.abs(d[sel]).mean(), rel=1e-5)
        assert out["psnr"][i].item() == pytest.approx(10 * np.log10(r ** 2 / (d[sel] ** 2).mean()), abs=1e-3)
        _, smap = _sk_ssim(ref32[i], pred32[i], r, full=True)
        inner = sel[pad:-pad, pad:-pad]
        assert out["ssim"][i].item() == pytest.approx(smap[pad:-pad, pad:-pad][inner].mean(), abs=1e-4)
    # an all-ones mask is the unmasked metric
    full = M.image_metrics(_t(pred), _t(ref), data_range=r, mask=torch.ones(2, 32, 32))
    plain = M.image_metrics(_t(pred), _t(ref), data_range=r)
    for k in plain:
        torch.testing.assert_close(full[k], plain[k], rtol=1e-5, atol=1e-5)


def test_empty_mask_gives_nan_and_summaries_skip_it():
    ref, pred = _pair("random", 2, 16, 16, (-1.0, 1.0))
    mask = torch.ones(2, 1, 16, 16)
    mask[1] = 0
    out = M.image_metrics(_t(pred), _t(ref), mask=mask)
    for v in out.values():
        assert math.isfinite(v[0].item()) and math.isnan(v[1].item())
    s = M.summarise(out)
    assert s["mae_mean"] == pytest.approx(out["mae"][0].item()) and s["mae_std"] == 0.0
    acc = M.MetricAccumulator()
    acc.update(out)
    assert acc.count("mae") == 1 and acc.compute()["mae_mean"] == pytest.approx(out["mae"][0].item())


def test_identical_images_psnr_capped_ssim_one_mae_zero():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = M.image_metrics(x, x.clone())
    assert torch.all(out["psnr"] == M.PSNR_MAX_DB)
    torch.testing.assert_close(out["ssim"], torch.ones(2))
    assert torch.all(out["mae"] == 0)
    # the cap is only a floor on the MSE: a tiny but nonzero error stays below it and finite
    y = x.clone()
    y[:, :, 0, 0] += 1e-3
    assert torch.all(M.psnr(y, x) < M.PSNR_MAX_DB)


def test_float32_under_bf16_autocast():
    ref, pred = _pair("structured", 2, 16, 16, (-1.0, 1.0))
    p, r = _t(pred), _t(ref)
    plain = M.image_metrics(p, r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = M.image_metrics(p.bfloat16(), r.bfloat16())
        auto_f32_inputs = M.image_metrics(p, r)
    for k in plain:
        assert auto[k].dtype == torch.float32
        torch.testing.assert_close(auto_f32_inputs[k], plain[k])  # autocast must not lower precision
        # bf16 inputs: only the rounding of the inputs (8 bits mantissa) moves the values
        assert torch.allclose(auto[k], plain[k], rtol=0.02, atol=0.02)


def test_bad_inputs_raise_clear_errors():
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        M.ssim(x, torch.zeros(2, 1, 16, 8))
    with pytest.raises(ValueError, match="11x11"):
        M.ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(x, x, data_range=0)
    with pytest.raises(ValueError, match="mask"):
        M.mae(x, x, mask=torch.ones(2, 1, 8, 8))


def test_summarise_and_accumulator_match_numpy():
    rng = np.random.default_rng(4)
    batches = [{"ssim": torch.from_numpy(rng.uniform(0, 1, n)), "psnr": torch.from_numpy(rng.normal(30, 3, n))}
               for n in (5, 1, 7)]
    acc = M.MetricAccumulator()
    for b in batches:
        acc.update(b, prefix="fwd")
    allv = {k: np.concatenate([b[k].numpy() for b in batches]) for k in ("ssim", "psnr")}
    got = acc.compute()
    for k, v in allv.items():
        assert got[f"fwd/{k}_mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert got[f"fwd/{k}_std"] == pytest.approx(v.std(), rel=1e-10)
        s = M.summarise({k: torch.from_numpy(v)})
        assert s[f"{k}_mean"] == pytest.approx(v.mean()) and s[f"{k}_std"] == pytest.approx(v.std())
    # two workers' accumulators merged (via plain state dicts) = one accumulator over everything
    a, b = M.MetricAccumulator(), M.MetricAccumulator()
    a.update(batches[0], prefix="fwd")
    b.update(batches[1], prefix="fwd")
    b.update(batches[2], prefix="fwd")
    merged = M.MetricAccumulator.from_state_dict(a.state_dict()).merge(M.MetricAccumulator.from_state_dict(b.state_dict()))
    for k, v in got.items():
        assert merged.compute()[k] == pytest.approx(v, rel=1e-10)
    assert merged.count("fwd/ssim") == 13


def test_direction_metrics_names_keys_per_direction():
    ref, pred = _pair("random", 2, 16, 16, (-1.0, 1.0))
    fwd = M.image_metrics(_t(pred), _t(ref))
    bwd = M.image_metrics(_t(ref), _t(pred))
    out = M.direction_metrics({M.FORWARD: fwd, M.BACKWARD: bwd}, prefix="val")
    assert set(out) == {f"val/{d}/{k}_{s}" for d in ("fwd", "bwd") for k in ("ssim", "psnr", "mae") for s in ("mean", "std")}
    assert out["val/fwd/psnr_mean"] == pytest.approx(fwd["psnr"].double().mean().item())
    assert out["val/bwd/mae_mean"] == pytest.approx(out["val/fwd/mae_mean"])  # MAE is symmetric


# --- FID ------------------------------------------------------------------------------------------
def _scipy_frechet(mu1, s1, mu2, s2):
    """The usual pytorch-fid formula with scipy.linalg.sqrtm (independent of our eigh route)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [1, 4, 32])
def test_frechet_distance_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    feats1 = rng.standard_normal((200, dim)) @ rng.standard_normal((dim, dim))
    feats2 = rng.standard_normal((150, dim)) @ rng.standard_normal((dim, dim)) + 0.5
    mu1, s1 = M.feature_statistics(feats1)
    mu2, s2 = M.feature_statistics(feats2)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8 * np.trace(s1))


def test_frechet_distance_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()  # = 5 + 2
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want)


def test_fid_missing_weights_names_the_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(M.FIDWeightsUnavailable) as err:
        M.fid(x, x)
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / M.INCEPTION_WEIGHTS_FILE) in msg and "weights_path" in msg
    with pytest.raises(M.FIDWeightsUnavailable, match="does not exist"):
        M.fid(x, x, weights_path=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(1)}, bad)
    with pytest.raises(M.FIDWeightsUnavailable, match="not torchvision's Inception"):
        M.fid(x, x, weights_path=bad)


@pytest.mark.slow  # 2048-D eigendecompositions: ~10 s on 2 cores
def test_fid_end_to_end_random_backbone_check(tmp_path):
    """Random-backbone check (a randomly initialised Inception v3, not ImageNet weights): the plumbing
    (weights file, resize, normalise, features, statistics, distance) runs and gives ~0 for identical sets."""
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    path = tmp_path / M.INCEPTION_WEIGHTS_FILE
    torch.save(tv.inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(), path)
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    net = M._inception(path, torch.device("cpu"))
    f_real = M.inception_features(real, net, batch_size=3)  # uneven batches
    f_fake = M.inception_features(-real, net)
    assert f_real.shape == (4, 2048) and not np.allclose(f_real, f_fake)
    np.testing.assert_allclose(f_real, M.inception_features(real, net), rtol=1e-5, atol=1e-5 * np.abs(f_real).max())
    # N=4 << D=2048 makes the covariances singular: ~0 up to float64 rounding of the trace terms
    scale = np.trace(M.feature_statistics(f_real)[1])
    assert abs(M.fid(real, [real[:2], real[2:]], weights_path=path)) <= 1e-4 * scale
