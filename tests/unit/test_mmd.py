"""MMD^2 (Eq. 8) against a direct numpy double loop, closed forms, symmetry and gradient safety."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from bidpm.config import MethodConfig
from bidpm.losses import MMD, build_mmd, mmd2

MULTS = (0.5, 1.0, 2.0)


def np_kernel(a: np.ndarray, b: np.ndarray, kernel: str, h: float, mults) -> float:
    r = math.sqrt(float(np.sum((a - b) ** 2)))
    total = 0.0
    for m in mults:
        s = m * h
        if kernel == "rbf":
            total += math.exp(-(r**2) / (2 * s**2))
        elif kernel == "imq":
            total += (1 + r**2 / s**2) ** -0.5
        else:
            total += math.exp(-r / s)
    return total


def np_mmd2(x, y, kernel, bandwidth, scale, mults, estimator) -> float:
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    z = np.concatenate([x, y])
    if bandwidth == "median":
        dists = [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
        h = float(np.median(dists)) * scale
    else:
        h = scale
    m, n = len(x), len(y)
    k = lambda a, b: np_kernel(a, b, kernel, h, mults)  # noqa: E731
    if estimator == "biased":  # Eq. 8 verbatim, diagonal included
        sxx = sum(k(x[p], x[q]) for p in range(m) for q in range(m)) / m**2
        syy = sum(k(y[p], y[q]) for p in range(n) for q in range(n)) / n**2
    else:
        sxx = sum(k(x[p], x[q]) for p in range(m) for q in range(m) if p != q) / (m * (m - 1))
        syy = sum(k(y[p], y[q]) for p in range(n) for q in range(n) if p != q) / (n * (n - 1))
    sxy = sum(k(x[p], y[q]) for p in range(m) for q in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


@pytest.mark.parametrize(
    "kernel,estimator,bandwidth", list(itertools.product(["rbf", "imq", "laplacian"], ["biased", "unbiased"], ["median", "fixed"]))
)
def test_mmd_matches_numpy_double_loop(kernel, estimator, bandwidth):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 1, 3, 4))  # 5 "images" of 12 pixels
    y = rng.normal(loc=0.7, size=(6, 1, 3, 4))
    scale = 1.3 if bandwidth == "median" else 2.5
    ref = np_mmd2(x, y, kernel, bandwidth, scale, MULTS, estimator)
    got = mmd2(torch.from_numpy(x), torch.from_numpy(y), kernel, bandwidth, scale, MULTS, estimator)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert float(got) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # float32 inputs: computed in float64 inside, returned as float32
    got32 = mmd2(torch.from_numpy(x).float(), torch.from_numpy(y).float(), kernel, bandwidth, scale, MULTS, estimator)
    assert got32.dtype == torch.float32
    assert float(got32) == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_median_with_even_pair_count_is_numpy_median():
    """4 points -> 6 pairs (even): the median is the mean of the two middle distances, as np.median."""
    z = np.array([[0.0], [1.0], [3.0], [7.0]])  # distances 1,3,7,2,6,4 -> median (3 + 4) / 2 = 3.5
    x, y = torch.tensor(z[:2]), torch.tensor(z[2:])
    got = mmd2(x, y, "rbf", "median", 1.0, (1.0,), "biased")
    ref = np_mmd2(z[:2], z[2:], "rbf", "fixed", 3.5, (1.0,), "biased")
    assert float(got) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("kernel", ["rbf", "imq", "laplacian"])
def test_mmd_identical_samples(kernel):
    torch.manual_seed(0)
    x = torch.randn(6, 10, dtype=torch.float64)
    biased = mmd2(x, x.clone(), kernel, "median", 1.0, MULTS, "biased")
    # Eq. 8 with y = x: mean K + mean K - 2 mean K = 0. The cross pairs (x_i, copy of x_i) get r^2 ~ 1e-16
    # instead of 0 from the Gram-matrix expansion; only the Laplacian (via sqrt) sees it, at ~1e-8.
    assert abs(float(biased)) < (1e-7 if kernel == "laplacian" else 1e-12)
    # Unbiased closed form with y = x: 2 [ S_off / (m(m-1)) - (S_off + m k(0)) / m^2 ],
    # S_off = sum of off-diagonal kernel values of x, k(0) = number of bandwidths.
    m = x.shape[0]
    xn = x.numpy()
    pooled = np.concatenate([xn, xn])  # the median runs over the pooled sample, zero pairs included
    d = [np.linalg.norm(pooled[i] - pooled[j]) for i in range(2 * m) for j in range(i + 1, 2 * m)]
    h = float(np.median(d))
    s_off = sum(np_kernel(xn[p], xn[q], kernel, h, MULTS) for p in range(m) for q in range(m) if p != q)
    k0 = len(MULTS)
    closed = 2 * (s_off / (m * (m - 1)) - (s_off + m * k0) / m**2)
    unbiased = mmd2(x, x.clone(), kernel, "median", 1.0, MULTS, "unbiased")
    assert float(unbiased) == pytest.approx(closed, rel=1e-9, abs=1e-7 if kernel == "laplacian" else 1e-12)


def test_mmd_one_point_closed_form():
    """m = n = 1, RBF, one fixed bandwidth h: MMD^2 = 2 - 2 exp(-||a - b||^2 / (2 h^2))."""
    a, b = torch.tensor([[0.0, 0.0]], dtype=torch.float64), torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    got = mmd2(a, b, "rbf", "fixed", 5.0, (1.0,), "biased")
    assert float(got) == pytest.approx(2 - 2 * math.exp(-25 / 50), rel=1e-12)
    with pytest.raises(ValueError, match="unbiased"):
        mmd2(a, b, "rbf", "fixed", 5.0, (1.0,), "unbiased")


@pytest.mark.parametrize("kernel", ["rbf", "imq", "laplacian"])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_symmetric_and_separates(kernel, estimator):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(7, 4, generator=g, dtype=torch.float64) + 2.0
    xy, yx = mmd2(x, y, kernel, estimator=estimator), mmd2(y, x, kernel, estimator=estimator)
    assert float(xy) == pytest.approx(float(yx), rel=1e-12)
    assert float(xy) > 0.1


@pytest.mark.parametrize("kernel", ["rbf", "imq", "laplacian"])
def test_mmd_gradients_finite_with_duplicate_points(kernel):
    """Duplicated rows give zero distances off the diagonal; the Laplacian's sqrt must not produce NaN."""
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.cat([x.detach()[:2], torch.randn(2, 5)]).requires_grad_(True)
    loss = mmd2(torch.cat([x, x[:1]]), y, kernel)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert x.grad.abs().sum() > 0


def test_mmd_all_points_equal_is_finite():
    x = torch.ones(3, 4)
    assert float(mmd2(x, x.clone())) == pytest.approx(0.0, abs=1e-6)


def test_build_mmd_from_config_and_errors():
    cfg = MethodConfig(mmd_kernel="imq", mmd_bandwidth="fixed", mmd_bandwidth_scale=2.0, mmd_bandwidth_multipliers=[1.0, 3.0], mmd_estimator="unbiased")
    fn = build_mmd(cfg)
    assert fn == MMD("imq", "fixed", 2.0, (1.0, 3.0), "unbiased")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    assert float(fn(torch.from_numpy(x), torch.from_numpy(y))) == pytest.approx(
        np_mmd2(x, y, "imq", "fixed", 2.0, (1.0, 3.0), "unbiased"), rel=1e-9
    )
    with pytest.raises(ValueError, match="mmd_kernel"):
        mmd2(torch.from_numpy(x), torch.from_numpy(y), kernel="gauss")
    with pytest.raises(ValueError, match="per-sample sizes"):
        mmd2(torch.zeros(2, 3), torch.zeros(2, 4))
