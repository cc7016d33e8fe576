"""Squared Maximum Mean Discrepancy between two samples (paper Eq. 8, the unpaired loss L^u).

    MMD^2(x, y) = 1/m^2 sum_{p,p'} k(x_p, x_p') + 1/n^2 sum_{q,q'} k(y_q, y_q') - 2/(mn) sum_{p,q} k(x_p, y_q)

x (m, ...) and y (n, ...) are flattened per sample. Estimators:

* ``biased`` (default, exactly Eq. 8): the within-sample sums include the diagonal p = p'. It is >= 0
  and is a V-statistic; with m = n = 1 it is 2 k(0) - 2 k(x, y).
* ``unbiased``: the U-statistic; the within-sample sums drop the diagonal and divide by m(m-1) and
  n(n-1) (needs m, n >= 2). It can be slightly negative.

Kernels are sums over bandwidths s = b * h for b in ``multipliers`` (a multi-scale kernel, robust to a
bad single bandwidth), with squared distance r^2 = ||a - b||^2:

* ``rbf``:        sum_b exp(-r^2 / (2 s^2))
* ``imq``:        sum_b (1 + r^2 / s^2)^(-1/2)     (inverse multiquadric with c = s, scaled so k(0) = 1)
* ``laplacian``:  sum_b exp(-r / s)

Bandwidth h: ``median`` = ``scale`` x median of the pairwise distances r (not r^2) between the distinct
points of the pooled sample concat(x, y) (pairs i < j; numpy's median, i.e. the mean of the two middle
values for an even count), computed without gradient; ``fixed`` = ``scale``. A zero median (all points
equal) is clamped to 1e-12 so the kernel stays finite.

Numerics: r^2 = ||a||^2 + ||b||^2 - 2 a.b from one (N, D) x (D, N) product (no (N, N, D) tensor, so
192 x 192 images cost little memory), computed in float64 on the pooled sample centred at its mean
(distances unchanged, less cancellation), clamped at 0 and exactly 0 on the diagonal; the result is
returned in the inputs' dtype (at least float32; autocast is switched off inside). The N x N kernel
work is tiny next to the network, so float64 costs nothing noticeable. Exact duplicates off the
diagonal get r ~ 1e-8 |z| rather than 0. r = sqrt(r^2) uses a safe square root whose gradient at
r^2 = 0 is 0 (the Laplacian kernel would otherwise give NaN gradients).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..config import MethodConfig

KERNELS = ("rbf", "imq", "laplacian")
BANDWIDTHS = ("median", "fixed")
ESTIMATORS = ("biased", "unbiased")
DEFAULT_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
_TINY = 1e-12


def _safe_sqrt(r2: Tensor) -> Tensor:
    """sqrt with value 0 and gradient 0 where r2 == 0 (instead of an infinite gradient)."""
    pos = r2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, r2, torch.ones_like(r2))), torch.zeros_like(r2))


def pooled_sq_dists(z: Tensor) -> Tensor:
    """z (N, D) -> (N, N) squared Euclidean distances, >= 0, exactly 0 on the diagonal."""
    z = z - z.mean(dim=0, keepdim=True).detach()
    sq = (z * z).sum(dim=1)
    r2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return r2.masked_fill(eye, 0.0)


def median_heuristic(r2: Tensor) -> Tensor:
    """Median of sqrt(r2) over pairs i < j of a pooled (N, N) squared-distance matrix (no gradient)."""
    n = r2.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=r2.device)
    d2 = r2.detach()[iu[0], iu[1]]
    k = d2.numel()
    if k == 0:
        raise ValueError("mmd2: the median bandwidth needs at least 2 points in concat(x, y)")
    # sqrt is monotone: select order statistics of r^2 in O(k) (kthvalue), then take the root
    mid = k // 2
    upper = _safe_sqrt(d2.kthvalue(mid + 1).values)
    return upper if k % 2 else 0.5 * (_safe_sqrt(d2.kthvalue(mid).values) + upper)


def kernel_matrix(r2: Tensor, kernel: str, bandwidths: Sequence[Tensor] | Tensor) -> Tensor:
    """k(r^2) summed over bandwidths s: (N, N) -> (N, N). See the module docstring for each kernel."""
    if kernel not in KERNELS:
        raise ValueError(f"method.mmd_kernel: unknown {kernel!r}; use one of {KERNELS}")
    r = _safe_sqrt(r2) if kernel == "laplacian" else None
    out = torch.zeros_like(r2)
    for s in bandwidths:
        if kernel == "rbf":
            out = out + torch.exp(-r2 / (2.0 * s * s))
        elif kernel == "imq":
            out = out + torch.rsqrt(1.0 + r2 / (s * s))
        else:
            out = out + torch.exp(-r / s)
    return out


def mmd2(
    x: Tensor,
    y: Tensor,
    kernel: str = "rbf",
    bandwidth: str = "median",
    scale: float = 1.0,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    estimator: str = "biased",
) -> Tensor:
    """MMD^2 of Eq. 8 between x (m, ...) and y (n, ...) -> scalar tensor (differentiable in x and y)."""
    if bandwidth not in BANDWIDTHS:
        raise ValueError(f"method.mmd_bandwidth: unknown {bandwidth!r}; use one of {BANDWIDTHS}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"method.mmd_estimator: unknown {estimator!r}; use one of {ESTIMATORS}")
    if not multipliers or any(b <= 0 for b in multipliers):
        raise ValueError(f"method.mmd_bandwidth_multipliers: must be non-empty and positive, got {list(multipliers)}")
    if scale <= 0:
        raise ValueError(f"method.mmd_bandwidth_scale: must be > 0, got {scale}")
    m, n = x.shape[0], y.shape[0]
    if m < 1 or n < 1:
        raise ValueError(f"mmd2: both samples need at least one point (got m={m}, n={n})")
    xf, yf = x.reshape(m, -1), y.reshape(n, -1)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"mmd2: x and y have different per-sample sizes ({tuple(x.shape[1:])} vs {tuple(y.shape[1:])})")
    if estimator == "unbiased" and (m < 2 or n < 2):
        raise ValueError(f"mmd2: the unbiased estimator needs at least 2 points per sample (got m={m}, n={n}); use 'biased'")
    out_dtype = torch.promote_types(torch.promote_types(xf.dtype, yf.dtype), torch.float32)
    z = torch.cat([xf, yf], dim=0).to(torch.float64)
    with torch.autocast(device_type=z.device.type, enabled=False):  # keep the Gram matrix out of fp16/bf16
        r2 = pooled_sq_dists(z)
        if bandwidth == "median":
            h = median_heuristic(r2) * scale
        else:
            h = torch.tensor(float(scale), dtype=z.dtype, device=z.device)
        h = h.clamp_min(_TINY)
        K = kernel_matrix(r2, kernel, [b * h for b in multipliers])
    kxx, kyy, kxy = K[:m, :m], K[m:, m:], K[:m, m:]

    if estimator == "biased":
        out = kxx.mean() + kyy.mean() - 2.0 * kxy.mean()
    else:
        xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
        out = xx + yy - 2.0 * kxy.mean()
    return out.to(out_dtype)


@dataclass(frozen=True)
class MMD:
    """mmd2 with its settings bound: MMD(x (m, ...), y (n, ...)) -> scalar."""

    kernel: str = "rbf"
    bandwidth: str = "median"
    scale: float = 1.0
    multipliers: tuple[float, ...] = field(default=DEFAULT_MULTIPLIERS)
    estimator: str = "biased"

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return mmd2(x, y, self.kernel, self.bandwidth, self.scale, self.multipliers, self.estimator)


def build_mmd(cfg: MethodConfig) -> MMD:
    """``method.mmd_*`` -> callable(x, y) -> scalar MMD^2 (Eq. 8)."""
    return MMD(
        kernel=cfg.mmd_kernel,
        bandwidth=cfg.mmd_bandwidth,
        scale=float(cfg.mmd_bandwidth_scale),
        multipliers=tuple(float(b) for b in cfg.mmd_bandwidth_multipliers),
        estimator=cfg.mmd_estimator,
    )
