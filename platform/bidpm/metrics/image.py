"""Per-image synthesis metrics: SSIM, PSNR, MAE, one value per image, shape ``(B,)``.

Choices:

- ``data_range`` is explicit (2.0 for images in [-1, 1], 1.0 for [0, 1]); it sets SSIM's C1, C2 and
  PSNR's peak. Which scale a *reported* number uses is decided once, in ``bidpm.evaluation``
  (``evaluation.value_scale``, default: images mapped to [0, 1], data range 1), because SSIM's luminance
  term is not shift-invariant.
- SSIM follows Wang et al. (2004): Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, population
  (co)variances. The map is computed only where the whole window lies inside the image ("valid"
  positions, a 5-pixel border dropped), which equals scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``; that
  function also drops the border before averaging. Multi-channel images: mean over channels.
- All arithmetic runs in float32 with autocast disabled, so a bf16/fp16 training loop still gets
  float32 metrics.
- PSNR of identical images would be +inf; the MSE is clamped at ``data_range**2 * 10**(-PSNR_MAX_DB/10)``
  so PSNR is capped at ``PSNR_MAX_DB`` (100 dB). Finite values keep means, MLflow metrics and Tune
  objectives usable; real syntheses are far below the cap.
- Optional ``mask`` ((B,1,H,W), (B,H,W) or (B,C,H,W); nonzero = inside, fractional values act as
  weights): MAE and PSNR average the per-pixel error over the mask; SSIM averages its map over the mask
  pixels at valid positions (the window itself still sees the neighbourhood, mask or not, as in the
  usual "SSIM in the body mask" of synthesis papers). An image whose mask is empty there gets NaN;
  the aggregators skip NaN values (and report how many images they counted).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PSNR_MAX_DB", "SSIM_WINDOW", "image_metrics", "mae", "psnr", "ssim", "ssim_map"]

PSNR_MAX_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# --- input handling ----------------------------------------------------------------------------------
def _as_images(pred: Tensor, ref: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """(B,C,H,W) or (B,H,W) -> float32 (B,C,H,W) pair; checks shapes and data_range."""
    if pred.shape != ref.shape:
        raise ValueError(f"metrics: pred shape {tuple(pred.shape)} != ref shape {tuple(ref.shape)}; "
                         "pass the synthesis and its reference with the same (B,C,H,W)")
    if pred.dim() == 3:
        pred, ref = pred.unsqueeze(1), ref.unsqueeze(1)
    if pred.dim() != 4:
        raise ValueError(f"metrics: expected images (B,C,H,W) or (B,H,W), got shape {tuple(pred.shape)}")
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"metrics: data_range must be a positive number (max - min of the image scale, "
                         f"2.0 for [-1, 1]), got {data_range!r}")
    return pred.float(), ref.float()


def _as_mask(mask: Optional[Tensor], images: Tensor) -> Optional[Tensor]:
    """mask (B,1,H,W) / (B,H,W) / (B,C,H,W) -> float32 weights (B,C,H,W) on the images' device."""
    if mask is None:
        return None
    b, c, h, w = images.shape
    m = mask.unsqueeze(1) if mask.dim() == 3 else mask
    if m.dim() != 4 or m.shape[0] != b or m.shape[-2:] != (h, w) or m.shape[1] not in (1, c):
        raise ValueError(f"metrics: mask shape {tuple(mask.shape)} does not fit images {tuple(images.shape)}; "
                         "use (B,1,H,W) or (B,H,W)")
    m = m.to(device=images.device, dtype=torch.float32)
    if bool((m < 0).any()):
        raise ValueError("metrics: mask has negative values; use 0 outside and 1 (or a weight > 0) inside")
    return m.expand(b, c, h, w)


def _weighted_mean(values: Tensor, weights: Optional[Tensor]) -> Tensor:
    """(B,C,H,W) -> (B,): plain mean, or weighted mean (NaN where the weights sum to 0)."""
    if weights is None:
        return values.flatten(1).mean(dim=1)
    num = (values * weights).flatten(1).sum(dim=1)
    den = weights.flatten(1).sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))


def _float32(device: torch.device):
    """Context that switches autocast off so metric maths stays in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


# --- per-image metrics ------------------------------------------------------------------------------
def mae(pred: Tensor, ref: Tensor, data_range: float = 2.0, mask: Optional[Tensor] = None) -> Tensor:
    """Mean absolute error per image, (B,) in the images' units (mask: mean over mask pixels).

    ``data_range`` is only validated (kept for a uniform signature); MAE is not normalised by it.
    """
    pred, ref = _as_images(pred, ref, data_range)
    with _float32(pred.device):
        return _weighted_mean((pred - ref).abs(), _as_mask(mask, pred))


def psnr(pred: Tensor, ref: Tensor, data_range: float = 2.0, mask: Optional[Tensor] = None) -> Tensor:
    """PSNR per image in dB, (B,): 10 log10(data_range^2 / MSE), capped at ``PSNR_MAX_DB``."""
    pred, ref = _as_images(pred, ref, data_range)
    with _float32(pred.device):
        mse = _weighted_mean((pred - ref) ** 2, _as_mask(mask, pred))
        floor = data_range ** 2 * 10.0 ** (-PSNR_MAX_DB / 10.0)
        return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(floor))


def _gaussian_window(device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian taps (11,), as scipy.ndimage with sigma 1.5, truncate 3.5."""
    r = SSIM_WINDOW // 2
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return g / g.sum()


def _filter_valid(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter at valid positions: (N,C,H,W) -> (N,C,H-10,W-10)."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def _l_cs(x: Tensor, y: Tensor, data_range: float, g: Tensor) -> tuple[Tensor, Tensor]:
    """Luminance and contrast-structure maps at valid window positions (SSIM = their product; MS-SSIM
    uses them apart). Variances are shift invariant: each image is centred first so E[x^2] - E[x]^2 keeps
    its float32 precision when the data range is large (e.g. CT in Hounsfield units)."""
    xc = x - x.mean(dim=(-2, -1), keepdim=True)
    yc = y - y.mean(dim=(-2, -1), keepdim=True)
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    mxc, myc = _filter_valid(xc, g), _filter_valid(yc, g)
    var_x = _filter_valid(xc * xc, g) - mxc * mxc
    var_y = _filter_valid(yc * yc, g) - myc * myc
    cov_xy = _filter_valid(xc * yc, g) - mxc * myc
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1), (2 * cov_xy + c2) / (var_x + var_y + c2)


def ssim_map(pred: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """SSIM map at valid window positions, (B,C,H-10,W-10), float32 (Wang et al. 2004, Eq. 13)."""
    pred, ref = _as_images(pred, ref, data_range)
    h, w = pred.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"ssim: images are {h}x{w}; the Gaussian window needs at least "
                         f"{SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    with _float32(pred.device):
        lum, cs = _l_cs(pred, ref, data_range, _gaussian_window(pred.device))
        return lum * cs


def ssim(pred: Tensor, ref: Tensor, data_range: float = 2.0, mask: Optional[Tensor] = None) -> Tensor:
    """Mean SSIM per image, (B,); with ``mask`` the map is averaged over mask pixels (module doc)."""
    smap = ssim_map(pred, ref, data_range)
    r = SSIM_WINDOW // 2
    m = _as_mask(mask, pred.unsqueeze(1) if pred.dim() == 3 else pred)
    if m is not None:
        m = m[..., r:-r, r:-r]
    with _float32(smap.device):
        return _weighted_mean(smap, m)


def image_metrics(pred: Tensor, ref: Tensor, data_range: float = 2.0,
                  mask: Optional[Tensor] = None) -> dict[str, Tensor]:
    """``{"ssim", "psnr", "mae"}`` -> (B,) float32 tensors for a batch of syntheses ``pred`` vs ``ref``."""
    return {
        "ssim": ssim(pred, ref, data_range, mask),
        "psnr": psnr(pred, ref, data_range, mask),
        "mae": mae(pred, ref, data_range, mask),
    }
