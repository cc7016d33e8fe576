"""MS-SSIM (bidpm.metrics.ms_ssim) against a reference written here from Wang et al. (2003) in plain numpy
(sliding windows, block means), against scikit-image's SSIM at one scale, and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import structural_similarity

from bidpm.metrics.ms_ssim import MS_SSIM_MIN_SIZE, MS_SSIM_WEIGHTS, ms_ssim

W = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)          # the paper's Table / Eq. (weights), finest first


def _gauss() -> np.ndarray:
    x = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    g2 = np.outer(g, g)
    return g2 / g2.sum()


def _local(a: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local mean at every position where the 11x11 window fits."""
    return np.einsum("ijkl,kl->ij", sliding_window_view(a, (11, 11)), _gauss())


def _reference(x: np.ndarray, y: np.ndarray, rng: float, mask: np.ndarray | None = None) -> float:
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    m = np.ones_like(x) if mask is None else mask.astype(np.float64)
    value = 1.0
    for j, w in enumerate(W):
        mx, my = _local(x), _local(y)
        vx, vy, cxy = _local(x * x) - mx ** 2, _local(y * y) - my ** 2, _local(x * y) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        lum = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
        mm = m[5:-5, 5:-5]
        s = ((lum * cs if j == len(W) - 1 else cs) * mm).sum() / mm.sum()
        value *= max(s, 0.0) ** w
        h, wd = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2           # 2x2 block means, odd edge dropped
        x, y, m = (a[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3)) for a in (x, y, m))
    return value


def _pair(seed: int, size: int = 177) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image with structure at several scales and a distorted copy (blur + noise + offset)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ref = 0.5 + 0.2 * np.sin(6 * xx + r.uniform(0, 3)) * np.cos(4 * yy) + 0.1 * np.sin(30 * xx * yy)
    ref = ref + 0.05 * r.standard_normal(ref.shape)
    pred = 0.9 * ref + 0.05 + 0.08 * r.standard_normal(ref.shape)
    return pred, ref


def test_ms_ssim_matches_the_definition_written_in_numpy():
    assert MS_SSIM_WEIGHTS == W and MS_SSIM_MIN_SIZE == 176
    pairs = [_pair(s) for s in range(3)]
    pred = torch.tensor(np.stack([p for p, _ in pairs]), dtype=torch.float32)
    ref = torch.tensor(np.stack([q for _, q in pairs]), dtype=torch.float32)
    got = ms_ssim(pred, ref, data_range=1.0).numpy()
    want = [_reference(p, q, 1.0) for p, q in pairs]
    np.testing.assert_allclose(got, want, rtol=2e-4)
    assert 0.3 < got.min() and got.max() < 0.99                          # a real distortion, not a trivial case
    # inside a mask (a disc): each scale's map averaged with the block-averaged mask's weights
    yy, xx = np.mgrid[0:177, 0:177]
    disc = ((yy - 88) ** 2 + (xx - 70) ** 2 < 70 ** 2).astype(np.float32)
    got_m = ms_ssim(pred, ref, data_range=1.0, mask=torch.tensor(disc)[None, None].expand(3, 1, 177, 177)).numpy()
    np.testing.assert_allclose(got_m, [_reference(p, q, 1.0, disc) for p, q in pairs], rtol=2e-4)


def test_one_scale_is_scikit_images_ssim_and_identical_images_score_one():
    p, q = _pair(7, size=64)
    one = ms_ssim(torch.tensor(p)[None], torch.tensor(q)[None], data_range=1.0, weights=(1.0,)).item()
    ski = structural_similarity(p, q, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert one == pytest.approx(ski, abs=1e-5)
    big = torch.tensor(_pair(1)[1])[None]
    assert ms_ssim(big, big, data_range=1.0).item() == pytest.approx(1.0, abs=1e-6)


def test_too_small_images_and_an_empty_mask():
    small = torch.rand(2, 1, 175, 190)
    with pytest.raises(ValueError, match="at least 176x176"):
        ms_ssim(small, small, data_range=1.0)
    x = torch.rand(1, 1, 176, 176)
    assert torch.isnan(ms_ssim(x, x, data_range=1.0, mask=torch.zeros(1, 1, 176, 176))).all()


def test_the_evaluation_scores_ms_ssim_on_large_images_only_and_configs_say_so():
    """Wiring: at 176 px the scorer's per-image MS-SSIM is the numpy reference's on the closed-form
    synthesis (Euler with u = c adds c), summarised under the key schema; at 24 px there is no MS-SSIM key;
    a config ranking by MS-SSIM on small images is refused at load."""
    from bidpm.config import ConfigError, load_config
    from bidpm.config.metrics import SIZED_METRICS
    from bidpm.evaluation import GridSpec, evaluate
    from bidpm.evaluation.scorer import FieldSampler

    class Shift(torch.nn.Module):
        def forward(self, x, t):
            return torch.full_like(x, 0.1)

    assert SIZED_METRICS["ms_ssim"] == MS_SSIM_MIN_SIZE
    pairs = [_pair(s, size=176) for s in (3, 4)]
    src = np.stack([2 * p - 1 for p, _ in pairs]).astype(np.float32)          # [-1, 1]
    tgt = np.stack([2 * q - 1 for _, q in pairs]).astype(np.float32)
    mask = np.ones_like(src)
    mask[:, :, :20] = 0
    grid = [GridSpec("g", (0.0, 1.0), True)]
    ev = evaluate(FieldSampler(Shift()), [{"source": src, "target": tgt, "mask": mask}], grid, split="test", scale="unit")
    for k in range(2):
        pred, ref = (src[k] + 0.1 + 1) / 2, (tgt[k] + 1) / 2                 # the unit scale: (x + 1) / 2
        assert ev.main.values["fwd"]["ms_ssim"][k] == pytest.approx(_reference(pred, ref, 1.0, mask[k]), rel=2e-4)
    s = ev.main.summary("test")
    assert s["test/fwd_ms_ssim_mean"] == pytest.approx(ev.main.values["fwd"]["ms_ssim"].mean())
    assert s["test/ms_ssim_mean"] == pytest.approx(0.5 * (s["test/fwd_ms_ssim_mean"] + s["test/bwd_ms_ssim_mean"]))
    small = evaluate(FieldSampler(Shift()), [{"source": src[:, :24, :24], "target": tgt[:, :24, :24],
                                               "mask": mask[:, :24, :24]}], grid, split="test")
    assert not any("ms_ssim" in k for k in small.main.summary("test"))
    with pytest.raises(ConfigError, match="at least 176x176"):
        load_config(None, ["data.image_size=[32,32]", "tune.metric=val/ms_ssim_mean"])
    assert load_config(None, ["data.image_size=[192,192]", "tune.metric=val/ms_ssim_mean"]).tune.metric == "val/ms_ssim_mean"
